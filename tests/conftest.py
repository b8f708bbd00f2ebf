import pytest
from huggingface_hub import constants, hf_api

from .hub_server import HubServer


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A Hub-compatible server on 127.0.0.1 that `huggingface_hub` (and so diffusers) talks to for the test, with
    a token set and the Hub cache in the test's folder."""
    with HubServer() as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hf_api.api, "endpoint", server.url)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        yield server
