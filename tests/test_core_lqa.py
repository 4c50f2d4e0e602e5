"""The LQA answers by candidate scoring (`choose`); free greedy generation (`generate`) is the
official behaviour. On a tiny LQA trained here (teacher forcing, Adam, a few seconds on CPU) to
answer label X for latent pattern X, both paths must give the same text and the same hidden
states, and both must agree with the teacher-forced training pass."""

from __future__ import annotations

import pytest
import torch

from rar_core import prompts
from rar_core.lqa import LQA, sine_position_embedding, word_tokenizer

# Multi-token labels sharing first ("Low ...") and last ("... blur") words exercise the trie walk.
CLASSES = ["Clean", "Defocus blur", "Motion blur", "Low light", "Low resolution"]
LATENT = (16, 4, 4)  # 2x2 A_I tokens per image with the tiny config (patch 2)
GOOD = 0  # compare: "Image A" when A shows the Clean pattern and B does not


def patterns() -> torch.Tensor:
    return torch.randn(len(CLASSES), *LATENT, generator=torch.Generator().manual_seed(1234)) * 1.5


def sample(classes: list[int], seed: int, noise: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return patterns()[classes] + noise * torch.randn(len(classes), *LATENT, generator=g)


def identify_prefix(lqa: LQA, z: torch.Tensor, question: str = prompts.IDENTIFY[-1]) -> torch.Tensor:
    return lqa.prompt_embeds(prompts.identify_segments(question), [z])


def compare_prefix(lqa: LQA, z_a: torch.Tensor, z_b: torch.Tensor, question: str = prompts.COMPARE[-1]) -> torch.Tensor:
    return lqa.prompt_embeds(prompts.compare_segments(question), [z_a, z_b])


def compare_answer(a: int, b: int) -> str:
    return "Image A" if a == GOOD and b != GOOD else "Image B"


PAIRS = [(a, b) for a in range(len(CLASSES)) for b in range(len(CLASSES)) if a != b]


@pytest.fixture(scope="module")
def trained(tiny_factory):
    """Train a tiny LQA (A_I + vision_proj + LM) for both question kinds; returns (lqa, log)."""
    model = tiny_factory(seed=0)
    lqa = model.lqa
    lqa.train()
    torch.manual_seed(0)
    opt = torch.optim.Adam(lqa.parameters(), lr=4e-3)
    ids = list(range(len(CLASSES)))
    log = []
    for step in range(250):
        z = sample(ids, seed=step)
        _, loss_i = lqa.teacher_forced(identify_prefix(lqa, z), CLASSES)
        pairs = [PAIRS[(step * 7 + k) % len(PAIRS)] for k in range(6)] + [(GOOD, 1 + step % 4)] * 2
        za = sample([a for a, _ in pairs], seed=10_000 + step)
        zb = sample([b for _, b in pairs], seed=20_000 + step)
        _, loss_c = lqa.teacher_forced(compare_prefix(lqa, za, zb), [compare_answer(a, b) for a, b in pairs])
        loss = loss_i + loss_c
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.append((loss_i.item(), loss_c.item()))
    lqa.eval()
    return lqa, log


def test_training_converged(trained):
    _, log = trained
    first, last = log[0], log[-1]
    assert last[0] < 0.05 and last[1] < 0.05, f"teacher-forced losses did not converge: {first} -> {last}"


@torch.no_grad()
def test_identify_choose_equals_generate(trained):
    lqa, _ = trained
    ids = list(range(len(CLASSES)))
    z = sample(ids, seed=999)
    prefix = identify_prefix(lqa, z)
    L = prefix.shape[1]
    chosen = lqa.choose(prefix, CLASSES)
    free = lqa.generate(prefix)
    assert chosen.text == CLASSES  # the trained model knows every pattern...
    assert free.text == chosen.text  # ...and greedy generation says the very same
    assert chosen.index.tolist() == ids
    assert free.index.tolist() == [-1] * len(ids)
    for b, label in enumerate(CLASSES):
        n_answer = len(lqa.candidate_ids([label])[0])  # label words + "</s>"
        assert chosen.hidden[b].shape == (L + n_answer - 1, lqa.lm_config.hidden_size)
        assert free.hidden[b].shape == chosen.hidden[b].shape
        assert torch.allclose(free.hidden[b], chosen.hidden[b], atol=1e-4), (free.hidden[b] - chosen.hidden[b]).abs().max()


@torch.no_grad()
def test_identify_through_the_public_entry_point(trained):
    lqa, _ = trained
    for seed, question in [(5, prompts.IDENTIFY[-1]), (6, None)]:
        z = sample([4, 3, 0], seed=seed)
        a = lqa.identify(z, CLASSES, question)
        f = lqa.identify(z, CLASSES, question, free=True)
        assert a.text == f.text == [CLASSES[4], CLASSES[3], CLASSES[0]]
        for h1, h2 in zip(a.hidden, f.hidden):
            assert torch.allclose(h1, h2, atol=1e-4)


@torch.no_grad()
def test_compare_choose_equals_generate(trained):
    lqa, _ = trained
    pairs = [(0, 1), (0, 3), (2, 0), (3, 4), (1, 2), (0, 4)]
    za = sample([a for a, _ in pairs], seed=77)
    zb = sample([b for _, b in pairs], seed=78)
    expected = [compare_answer(a, b) for a, b in pairs]
    chosen = lqa.compare(za, zb)
    free = lqa.compare(za, zb, free=True)
    assert chosen.text == expected
    assert free.text == expected
    prefix = compare_prefix(lqa, za, zb)
    for b, text in enumerate(expected):
        n_answer = len(lqa.candidate_ids([text])[0])
        assert chosen.hidden[b].shape[0] == prefix.shape[1] + n_answer - 1
        assert torch.allclose(free.hidden[b], chosen.hidden[b], atol=1e-4)


@torch.no_grad()
def test_choose_agrees_with_teacher_forcing(trained):
    """Candidate log-probabilities and hidden states equal those of the training pass."""
    lqa, _ = trained
    z = sample([2], seed=31)
    prefix = identify_prefix(lqa, z)
    chosen = lqa.choose(prefix, CLASSES)
    assert chosen.logprob.shape == (1, len(CLASSES))
    for i, label in enumerate(CLASSES):
        hidden, loss = lqa.teacher_forced(prefix, [label])
        n = len(lqa.candidate_ids([label])[0])
        assert chosen.logprob[0, i].item() == pytest.approx(-loss.item() * n, abs=1e-3)
        if i == chosen.index[0]:
            assert torch.allclose(hidden[0], chosen.hidden[0], atol=1e-4)
    assert int(chosen.logprob[0].argmax()) == 2
    assert chosen.logprob[0, 2].exp().item() > 0.9


@torch.no_grad()
def test_batched_choose_equals_one_by_one(trained):
    lqa, _ = trained
    z = sample([1, 4, 2], seed=55)
    batch = lqa.choose(identify_prefix(lqa, z), CLASSES)
    for b in range(3):
        one = lqa.choose(identify_prefix(lqa, z[b : b + 1]), CLASSES)
        assert one.text[0] == batch.text[b]
        assert torch.allclose(one.logprob[0], batch.logprob[b], atol=1e-4)
        assert torch.allclose(one.hidden[0], batch.hidden[b], atol=1e-4)


@torch.no_grad()
def test_candidate_set_order_does_not_matter(trained):
    lqa, _ = trained
    z = sample([3, 1], seed=8)
    prefix = identify_prefix(lqa, z)
    fwd = lqa.choose(prefix, CLASSES)
    rev = lqa.choose(prefix, CLASSES[::-1])
    assert fwd.text == rev.text == [CLASSES[3], CLASSES[1]]
    assert torch.allclose(fwd.logprob, rev.logprob.flip(-1), atol=1e-4)


@torch.no_grad()
def test_untrained_choose_always_returns_a_candidate(tiny_model):
    lqa = tiny_model.lqa
    z = torch.randn(3, *LATENT, generator=torch.Generator().manual_seed(0))
    labels = list(tiny_model.config.labels)
    a = lqa.identify(z, labels)
    assert all(t in labels for t in a.text)
    assert [labels[i] for i in a.index.tolist()] == a.text
    c = lqa.compare(z, z.flip(0))
    assert all(t in prompts.COMPARE_ANSWERS for t in c.text)
    g = lqa.identify(z, labels, free=True)  # free text: any string, but well-formed
    assert len(g.text) == 3 and all(isinstance(t, str) for t in g.text)
    n_prefix = identify_prefix(lqa, z).shape[1]
    assert all(n_prefix <= h.shape[0] <= n_prefix + lqa.lm_config.max_new_tokens - 1 for h in g.hidden)


def test_lqa_without_tokenizer_says_so(tiny_model):
    tiny_model.lqa.tokenizer = None
    with pytest.raises(RuntimeError, match="no tokenizer"):
        tiny_model.lqa.identify(torch.zeros(1, *LATENT), ["Noise"])


def test_word_tokenizer_covers_every_prompt():
    tok = word_tokenizer(prompts.all_text() + list(CLASSES))
    unk = tok.unk_token_id
    for text in [*prompts.IDENTIFY, *prompts.COMPARE, prompts.SYSTEM, *CLASSES]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert unk not in ids, text
    for seg in prompts.identify_segments(prompts.IDENTIFY[0]) + prompts.compare_segments(prompts.COMPARE[0]):
        if seg is not None:
            assert unk not in tok(seg, add_special_tokens=False)["input_ids"], seg
    assert tok.decode(tok("Defocus blur </s>", add_special_tokens=False)["input_ids"], skip_special_tokens=True) == "Defocus blur"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)


def test_sine_position_embedding():
    pe = sine_position_embedding(3, 5, 8)
    assert pe.shape == (15, 8)
    assert torch.all(pe.abs() <= 1)
    pe = pe.view(3, 5, 8)
    assert torch.allclose(pe[:, 0, :4], pe[:, 4, :4])  # y half depends on the row only
    assert torch.allclose(pe[0, :, 4:], pe[2, :, 4:])  # x half depends on the column only
    assert not torch.allclose(pe[0, 0], pe[1, 1])


@torch.no_grad()
def test_a_margin_thresholds_the_clean_answer(trained):
    """With a margin on "Clean", it is the answer exactly when its log-probability beats every
    other label's by more than the margin; otherwise the answer, and the hidden states A_Q reads,
    are those of the greedy choice among the other labels."""
    lqa, _ = trained
    ids = [0, 0, 0, 1, 2, 3, 4, 0]
    z = sample(ids, seed=321, noise=1.0)  # noisy enough that the Clean log-odds spread
    prefix = identify_prefix(lqa, z)
    plain = lqa.choose(prefix, CLASSES)
    rest = lqa.choose(prefix, CLASSES[1:])
    gap = plain.logprob[:, 0] - plain.logprob[:, 1:].max(1).values
    assert gap.max() > 0 > gap.min()  # both kinds of item are here
    for m in [-1e9, float(gap.min()) - 1.0, 0.0, float(gap.median()), float(gap.max()) + 1.0, 1e9]:
        a = lqa.choose(prefix, CLASSES, {"Clean": m})
        for b in range(len(ids)):
            if gap[b] > m:
                assert a.text[b] == "Clean"
                assert torch.allclose(a.hidden[b], plain.hidden[b] if plain.text[b] == "Clean" else
                                      lqa.teacher_forced(prefix[b : b + 1], ["Clean"])[0][0], atol=1e-4)
            else:
                assert a.text[b] == rest.text[b]
                assert torch.allclose(a.hidden[b], rest.hidden[b], atol=1e-4)
        assert torch.equal(a.logprob, plain.logprob)  # the scores are the LQA's; only the decision moves
    # a margin on a label that is not a candidate changes nothing
    assert lqa.choose(prefix, CLASSES, {"Snow": 5.0}).text == plain.text
