"""Bad inputs give a clear node error and leave ComfyUI running."""
import numpy as np
import pytest
from PIL import Image

from comfy_client import CORRUPT_MODEL, TINY_MODEL, TINY_OFFICIAL, error_of, load_twin, prepare


@pytest.fixture(scope="module")
def image_name(comfy):
    return comfy.upload_image(Image.fromarray(np.full((48, 64, 3), 128, "uint8")), "rar_err.png")


def run_error(comfy, api):
    entry = comfy.run(api)
    err = error_of(entry)
    assert entry["status"]["status_str"] == "error" and err, "expected a node error"
    assert comfy.get_json("/system_stats")  # still serving
    return err


def assess_graph(image_name, model, latent_source):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "RARModelLoader", "inputs": {"model_name": model, "dtype": "auto"}},
        **latent_source,
        "4": {"class_type": "RARAssess", "inputs": {"rar_model": ["2", 0], "latent": ["3", 0]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
    }


def test_missing_model_fails_validation(comfy, image_name):
    api = prepare(load_twin("rar_1_restore_image"), image_name, "no_such_model.safetensors")
    status, body = comfy.queue(api)
    assert status == 400
    errors = body["node_errors"]["2"]["errors"]
    assert "no_such_model.safetensors" in errors[0]["details"] + errors[0]["message"]


def test_corrupt_model_is_a_clear_error(comfy, image_name):
    err = run_error(comfy, prepare(load_twin("rar_1_restore_image"), image_name, CORRUPT_MODEL))
    assert err["node_type"] == "RARModelLoader"
    assert CORRUPT_MODEL in err["exception_message"] and "corrupt" in err["exception_message"]


def test_core_vae_latent_is_refused_by_the_compact_model(comfy, image_name):
    source = {"6": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
              "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["6", 0]}}}
    err = run_error(comfy, assess_graph(image_name, TINY_MODEL, source))
    assert err["node_type"] == "RARAssess" and "RAR Latent Encode" in err["exception_message"]


def test_official_tier_refuses_a_wrong_vae(comfy, image_name):
    source = {"6": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
              "3": {"class_type": "RARLatentEncode", "inputs": {"rar_model": ["2", 0], "image": ["1", 0],
                                                              "vae": ["6", 0]}}}
    err = run_error(comfy, assess_graph(image_name, TINY_OFFICIAL, source))
    assert err["node_type"] == "RARLatentEncode" and "SD3.5 VAE" in err["exception_message"]


def test_official_tier_needs_a_vae(comfy, image_name):
    source = {"3": {"class_type": "RARLatentEncode", "inputs": {"rar_model": ["2", 0], "image": ["1", 0]}}}
    err = run_error(comfy, assess_graph(image_name, TINY_OFFICIAL, source))
    assert "connect the SD3.5 VAE" in err["exception_message"]


def test_latent_from_another_rar_codec_is_refused(comfy, image_name):
    api = assess_graph(image_name, TINY_OFFICIAL, {
        "7": {"class_type": "RARModelLoader", "inputs": {"model_name": TINY_MODEL, "dtype": "auto"}},
        "3": {"class_type": "RARLatentEncode", "inputs": {"rar_model": ["7", 0], "image": ["1", 0]}}})
    err = run_error(comfy, api)
    assert "rar-compact" in err["exception_message"] and "sd3" in err["exception_message"]


def test_empty_sd_latent_is_refused(comfy, image_name):
    source = {"3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    err = run_error(comfy, assess_graph(image_name, TINY_MODEL, source))
    assert "RAR Latent Encode" in err["exception_message"]


def test_too_small_image_is_a_clear_error(comfy):
    name = comfy.upload_image(Image.fromarray(np.zeros((8, 12, 3), "uint8")), "rar_tiny.png")
    err = run_error(comfy, prepare(load_twin("rar_1_restore_image"), name, TINY_MODEL))
    assert "12x8" in err["exception_message"] and "16" in err["exception_message"]
