from ldm.inference.parameters import GenerationParameters, parse_parameters


def _params(**overrides):
    values = dict(prompt="a red circle", negative_prompt="blurry", steps=20, sampler="DDIM",
                  cfg_scale=7.5, seed=1234, width=512, height=768, model_hash="0123456789",
                  model_name="v1-5-pruned")
    values.update(overrides)
    return GenerationParameters(**values)


def test_text_has_a1111_layout():
    text = _params().to_text()
    assert text.splitlines() == [
        "a red circle",
        "Negative prompt: blurry",
        "Steps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 1234, Size: 512x768, "
        "Model hash: 0123456789, Model: v1-5-pruned",
    ]


def test_text_round_trips_through_parser():
    params = _params(extra={"Denoising strength": 0.8})
    parsed = parse_parameters(params.to_text())
    assert parsed["Prompt"] == "a red circle"
    assert parsed["Negative prompt"] == "blurry"
    assert int(parsed["Steps"]) == 20
    assert parsed["Sampler"] == "DDIM"
    assert float(parsed["CFG scale"]) == 7.5
    assert int(parsed["Seed"]) == 1234
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")
    assert parsed["Model hash"] == "0123456789"
    assert parsed["Model"] == "v1-5-pruned"
    assert float(parsed["Denoising strength"]) == 0.8


def test_empty_negative_prompt_is_left_out_and_parses_as_empty():
    text = _params(negative_prompt="").to_text()
    assert "Negative prompt" not in text
    assert parse_parameters(text)["Negative prompt"] == ""


def test_values_with_commas_colons_and_quotes_survive():
    params = _params(model_name='my, "odd": model', prompt="line one\nline two, with comma",
                     negative_prompt="ugly,\nbad")
    parsed = parse_parameters(params.to_text())
    assert parsed["Model"] == 'my, "odd": model'
    assert parsed["Prompt"] == "line one\nline two, with comma"
    assert parsed["Negative prompt"] == "ugly,\nbad"


def test_text_without_parameter_line_is_all_prompt():
    parsed = parse_parameters("just a prompt")
    assert parsed["Prompt"] == "just a prompt"
    assert "Steps" not in parsed
