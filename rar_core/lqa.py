"""Latent Quality Assessment (LQA, Sec. 5.2, Eq. 1): LQA(z) = IQA(A_I(z)).

A_I turns the restoration latent into LM token embeddings (official `FormerAbstractorModel`
with "local" features + `vision_proj`, same parameter names so official weights load as is).
The IQA model is a LlamaForCausalLM (Vicuna-7B layout for the official tier) that answers the
two question kinds of `prompts.py`. Its last-layer hidden states of [prompt; answer] are the
assessment that A_Q turns into restoration conditioning.

Answering: the official code generates up to 400 tokens greedily. We score a fixed candidate
set instead: one forward of the shared prompt (its KV cache is reused), one batched forward of
all candidates, then a greedy walk restricted to the candidates' token trie. Where greedy
generation would produce one of the candidates, this returns exactly that candidate.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.models.llama.modeling_llama import LlamaModel

from . import prompts
from .config import AdapterConfig, LMConfig
from .layers import PatchConv
from .operations import compute_device, compute_dtype


# transformers renamed the KV-cache argument and output field ("past_key_values" -> "cache").
_CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def sine_position_embedding(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D sine embedding (DETR style, normalised, scale 2*pi) as in the official A_I.

    Returns [h*w, dim]: per axis dim/2 interleaved sin/cos features, y first then x.
    """
    n = dim // 2
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + 1e-6) * 2 * math.pi
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + 1e-6) * 2 * math.pi
    k = torch.arange(n, dtype=torch.float32, device=device)
    div = 10000.0 ** (2 * torch.div(k, 2, rounding_mode="floor") / n)

    def axis(p: torch.Tensor) -> torch.Tensor:
        a = p[:, None] / div
        return torch.stack((a[:, 0::2].sin(), a[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = axis(y)[:, None, :].expand(h, w, n)
    pos_x = axis(x)[None, :, :].expand(h, w, n)
    return torch.cat((pos_y, pos_x), dim=-1).reshape(h * w, dim)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """CLIP-style pre-norm block (names as the official `local_attn.resblocks.{j}`)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, width * 4), gelu=QuickGELU(), c_proj=nn.Linear(width * 4, width))
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Blocks(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])


class ImageAdapter(nn.Module):
    """A_I: patchify the latent, add sine positions, a small transformer -> [B, tokens, width]."""

    def __init__(self, config: AdapterConfig, latent_channels: int):
        super().__init__()
        self.config = config
        self.conv1 = PatchConv(latent_channels, config.width, config.patch, stride=config.patch, bias=False)
        self.ln_pre = nn.LayerNorm(config.width)
        self.local_attn = _Blocks(config.width, config.layers, config.heads)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = x + sine_position_embedding(h, w, x.shape[-1], x.device).to(x.dtype)
        return self.local_attn.resblocks(self.ln_pre(x))


@dataclass
class Answer:
    """What the LQA said, and the hidden states A_Q reads (Sec. 3.4 of the layout notes)."""

    text: list[str]  # per batch item
    index: torch.Tensor  # chosen candidate per item ([B] long; -1 for free generation)
    logprob: torch.Tensor  # [B, C] summed log-probability of every candidate (empty if generated)
    hidden: list[torch.Tensor]  # per item [L_i, D]: [prompt ; answer tokens but the last]


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the fixed prompt vocabulary, for the compact LQA.

    The compact model only ever reads the prompts and labels of this pack, so a word vocabulary
    (built with HF `tokenizers`, stored inside the checkpoint) beats shipping a 32k BPE model.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words: dict[str, None] = {}
    pre = pre_tokenizers.Whitespace()
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text.replace("</s>", " ")):
            words.setdefault(word, None)
    vocab = {tok: i for i, tok in enumerate(specials + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.add_special_tokens(specials)
    return tokenizer_from_json(tok.to_str())


def tokenizer_from_json(text: str) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_object=_tokenizer_object(text))
    vocab = tok.get_vocab()
    # Name the special tokens the vocabulary already has; never grow it (Vicuna's 32000 fill the
    # embedding table, and like the official code it pads with </s>).
    specials = {k: v for k, v in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>")) if v in vocab}
    specials["pad_token"] = "<pad>" if "<pad>" in vocab else "</s>"
    tok.add_special_tokens(specials)
    tok.tokenizer_json = text  # kept verbatim so checkpoints round-trip exactly
    return tok


def _tokenizer_object(text: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def log_odds_over_rest(lp: torch.Tensor, i: int) -> torch.Tensor:
    """[B] log-probability of candidate i minus the best other candidate's (lp: [B, C], C > 1)."""
    return lp[:, i] - torch.cat((lp[:, :i], lp[:, i + 1:]), 1).max(1).values


class LQA(nn.Module):
    def __init__(self, adapter: AdapterConfig, lm: LMConfig, latent_channels: int):
        super().__init__()
        self.lm_config = lm
        self.A_I = ImageAdapter(adapter, latent_channels)
        self.vision_proj = nn.Linear(adapter.width, lm.hidden_size)
        cfg = LlamaConfig(
            vocab_size=lm.vocab_size,
            hidden_size=lm.hidden_size,
            intermediate_size=lm.intermediate_size,
            num_hidden_layers=lm.num_hidden_layers,
            num_attention_heads=lm.num_attention_heads,
            max_position_embeddings=lm.max_position_embeddings,
            rms_norm_eps=lm.rms_norm_eps,
            rope_theta=lm.rope_theta,  # transformers 5 folds this into rope_parameters
            bos_token_id=lm.bos_token_id,
            eos_token_id=lm.eos_token_id,
            pad_token_id=lm.pad_token_id,
            tie_word_embeddings=False,
        )
        cfg._attn_implementation = "sdpa"
        self.lm = LlamaForCausalLM(cfg)
        self.tokenizer: PreTrainedTokenizerFast | None = None

    # ----- prompt assembly -------------------------------------------------------------
    def _text_ids(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise RuntimeError("this LQA has no tokenizer; load it from a RAR checkpoint")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def embed_image(self, z: torch.Tensor) -> torch.Tensor:
        """A_I + vision_proj: latent [B,C,h,w] -> LM embeddings [B, tokens, D]."""
        return self.vision_proj(self.A_I(z))

    def prompt_embeds(self, segments: list[str | None], images: list[torch.Tensor]) -> torch.Tensor:
        """[BOS] + text / image embeddings in order; text segments are tokenised separately."""
        emb = self.lm.get_input_embeddings()
        batch = images[0].shape[0]
        device, dtype = compute_device(self), compute_dtype(self)
        parts = [emb(torch.tensor([[self.lm_config.bos_token_id]], device=device)).expand(batch, -1, -1)]
        it = iter(images)
        for seg in segments:
            if seg is None:
                parts.append(self.embed_image(next(it)).to(dtype))
            else:
                ids = torch.tensor([self._text_ids(seg)], device=device)
                parts.append(emb(ids).expand(batch, -1, -1))
        return torch.cat(parts, dim=1)

    def candidate_ids(self, candidates: list[str]) -> list[list[int]]:
        return [self._text_ids(c + self.lm_config.answer_suffix) for c in candidates]

    # ----- answering -------------------------------------------------------------------
    def choose(self, prefix: torch.Tensor, candidates: list[str], margins: dict[str, float] | None = None) -> Answer:
        """Greedy answer restricted to `candidates`, from one prefix pass + one candidate pass.

        `margins` turns a candidate into a thresholded decision: it is the answer exactly when its
        log-probability beats every other candidate's by more than its margin, and otherwise the
        greedy answer among the others is. A small LQA's "Clean" is calibrated this way, as the
        verifier's log-odds are (scripts/calibrate_verify.py)."""
        cand = self.candidate_ids(candidates)
        B, C = prefix.shape[0], len(cand)
        out = self.lm.model(inputs_embeds=prefix, use_cache=True)
        h_prefix = out.last_hidden_state
        first_logits = self.lm.lm_head(h_prefix[:, -1]).float().log_softmax(-1)  # predicts token 0

        M = max(len(c) for c in cand)
        ids = torch.full((C, M), self.lm_config.pad_token_id, dtype=torch.long, device=prefix.device)
        for i, c in enumerate(cand):
            ids[i, : len(c)] = torch.tensor(c, device=prefix.device)
        cache = _cache_of(out)
        cache.batch_repeat_interleave(C)
        # Right padding needs no mask: pads come after every real token, causality hides them.
        step = self.lm.model(input_ids=ids.repeat(B, 1), use_cache=False, **{_CACHE_ARG: cache})
        h_cand = step.last_hidden_state.view(B, C, M, -1)
        logits = self.lm.lm_head(h_cand).float().log_softmax(-1)  # position j predicts token j+1

        lp = torch.zeros(B, C, device=prefix.device)
        for i, c in enumerate(cand):
            toks = torch.tensor(c, device=prefix.device)
            lp[:, i] = first_logits[:, toks[0]] + logits[:, i, : len(c) - 1].gather(-1, toks[1:].expand(B, -1)[..., None]).squeeze(-1).sum(-1)

        def greedy(b: int, alive: list[int]) -> int:
            d = 0
            while True:
                step_logits = first_logits[b] if d == 0 else logits[b, alive[0], d - 1]
                options = {cand[i][d] for i in alive if len(cand[i]) > d}
                tok = max(options, key=lambda t: step_logits[t].item())
                alive = [i for i in alive if len(cand[i]) > d and cand[i][d] == tok]
                d += 1
                done = [i for i in alive if len(cand[i]) == d]
                if done:
                    return done[0]

        thresholded = {candidates.index(c): m for c, m in (margins or {}).items() if c in candidates and C > 1}
        gap = {i: log_odds_over_rest(lp, i) for i in thresholded}
        index = torch.empty(B, dtype=torch.long)
        hidden = []
        for b in range(B):
            pick, alive = None, list(range(C))
            for i, m in thresholded.items():
                if float(gap[i][b]) > m:
                    pick = i
                    break
                alive.remove(i)
            if pick is None:
                pick = greedy(b, alive or list(range(C)))
            index[b] = pick
            hidden.append(torch.cat((h_prefix[b], h_cand[b, pick, : len(cand[pick]) - 1]), dim=0))
        return Answer([candidates[i] for i in index.tolist()], index, lp, hidden)

    @torch.no_grad()
    def generate(self, prefix: torch.Tensor, max_new_tokens: int | None = None) -> Answer:
        """Free greedy generation (the official behaviour): slower, open vocabulary."""
        max_new = max_new_tokens or self.lm_config.max_new_tokens
        eos = self.lm_config.eos_token_id
        emb = self.lm.get_input_embeddings()
        B = prefix.shape[0]
        out = self.lm.model(inputs_embeds=prefix, use_cache=True)
        h_prefix, cache = out.last_hidden_state, _cache_of(out)
        tok = self.lm.lm_head(h_prefix[:, -1]).argmax(-1)
        tokens, states = [tok], []
        done = tok == eos
        for _ in range(max_new - 1):
            if bool(done.all()):
                break
            out = self.lm.model(inputs_embeds=emb(tok[:, None]), use_cache=True, **{_CACHE_ARG: cache})
            cache = _cache_of(out)
            states.append(out.last_hidden_state[:, -1])
            tok = torch.where(done, torch.full_like(tok, eos), self.lm.lm_head(out.last_hidden_state[:, -1]).argmax(-1))
            tokens.append(tok)
            done = done | (tok == eos)
        tokens = torch.stack(tokens, 1)
        texts, hidden = [], []
        for b in range(B):
            seq = tokens[b].tolist()
            n = seq.index(eos) + 1 if eos in seq else len(seq)
            texts.append(self.tokenizer.decode(seq[:n], skip_special_tokens=True).strip())
            extra = torch.stack(states, 1)[b, : n - 1] if states else h_prefix.new_zeros(0, h_prefix.shape[-1])
            hidden.append(torch.cat((h_prefix[b], extra), 0))
        return Answer(texts, torch.full((B,), -1), torch.empty(B, 0), hidden)

    def teacher_forced(self, prefix: torch.Tensor, answers: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Training pass: hidden states of [prompt; answer] and the LM loss on the answer tokens."""
        ids = [self._text_ids(a + self.lm_config.answer_suffix) for a in answers]
        M = max(len(i) for i in ids)
        B, L = prefix.shape[:2]
        tgt = torch.full((B, M), -100, dtype=torch.long, device=prefix.device)
        inp = torch.full((B, M), self.lm_config.pad_token_id, dtype=torch.long, device=prefix.device)
        for b, i in enumerate(ids):
            tgt[b, : len(i)] = torch.tensor(i)
            inp[b, : len(i)] = torch.tensor(i)
        x = torch.cat((prefix, self.lm.get_input_embeddings()(inp)), dim=1)
        h = self.lm.model(inputs_embeds=x).last_hidden_state
        logits = self.lm.lm_head(h[:, L - 1 : L - 1 + M]).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
        hidden = [h[b, : L + len(i) - 1] for b, i in enumerate(ids)]
        return hidden, loss

    # ----- the two question kinds ------------------------------------------------------
    def identify(self, z: torch.Tensor, labels: list[str], question: str | None = None, free: bool = False,
                 margins: dict[str, float] | None = None) -> Answer:
        """Which degradation dominates z? (official `quality_single_A_noref`; `margins`: see `choose`)."""
        prefix = self.prompt_embeds(prompts.identify_segments(question or prompts.IDENTIFY[-1]), [z])
        return self.generate(prefix) if free else self.choose(prefix, list(labels), margins)

    def compare(self, z_a: torch.Tensor, z_b: torch.Tensor, question: str | None = None, free: bool = False) -> Answer:
        """Is Image A (candidate) better than Image B (previous)? (official `quality_compare_noref`)."""
        prefix = self.prompt_embeds(prompts.compare_segments(question or prompts.COMPARE[-1]), [z_a, z_b])
        return self.generate(prefix, 8) if free else self.choose(prefix, list(prompts.COMPARE_ANSWERS))

