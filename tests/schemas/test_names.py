import pytest

from llmq.schemas.names import escape_model, model_kv_key, unescape_model


@pytest.mark.parametrize(
    ("model", "token"),
    [
        ("gpt-4.1", "gpt-4%2E1"),
        ("llama3:instruct", "llama3%3Ainstruct"),
        ("echo", "echo"),
        ("ollama:qwen2.5", "ollama%3Aqwen2%2E5"),
        ("a b/c*>", "a%20b%2Fc%2A%3E"),
        ("modèle", "mod%C3%A8le"),
    ],
)
def test_escape_both_ways(model: str, token: str) -> None:
    assert escape_model(model) == token
    assert unescape_model(token) == model


def test_escaped_token_is_one_subject_token() -> None:
    token = escape_model("org/model.v2:latest >*")
    assert all(c.isalnum() or c in "_-%" for c in token)


def test_kv_key_has_only_kv_safe_characters() -> None:
    key = model_kv_key("gpt-4.1:x=y")
    assert all(c.isalnum() or c in "-_=" for c in key)
    assert model_kv_key("gpt-4.1") != model_kv_key("gpt-4-1")


def test_empty_name_rejected() -> None:
    with pytest.raises(ValueError):
        escape_model("")
