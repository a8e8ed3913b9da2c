"""benchmarks.model_bench's decoder-shape comparison [3]: shapes parsed and checked, a real (tiny) run."""
import pytest

from benchmarks import model_bench


def test_decoder_shapes_parse_to_32_wide_heads():
    assert model_bench.decoder_shape("128x2") == dict(decoder_embed_dim=128, decoder_depth=2,
                                                      decoder_num_heads=4)
    assert model_bench.decoder_shapes("128x2, 64X4") == ["128x2", "64X4"]


@pytest.mark.parametrize("bad", ["128", "100x2", "64x0", "axb", ","])
def test_a_bad_decoder_shape_is_one_clear_line_and_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as e:
        model_bench.main(["--skip-hf", "--skip-ablation", "--decoders", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--decoders" in err and ("WIDTHxDEPTH" in err or "multiple of 32" in err or "no decoder" in err)


def test_the_decoder_comparison_runs_and_prints_ratios_to_the_first(capsys):
    assert model_bench.main(["--quick", "--skip-hf", "--skip-ablation",
                             "--decoder-model", "mae_vit_pico_patch8_64", "--decoder-batch", "4",
                             "--decoders", "64x1,32x2"]) == 0
    out = capsys.readouterr().out
    assert "[3] decoder shapes" in out and "mae_vit_pico_patch8_64" in out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith("decoder ")]
    assert len(lines) == 2 and lines[0].rstrip().endswith("1.00x 64x1")


@pytest.mark.parametrize("flag", ["--model", "--decoder-model"])
def test_an_unknown_preset_is_one_clear_line_and_exit_2(flag, capsys):
    with pytest.raises(SystemExit) as e:
        model_bench.main([flag, "mae_vit_micro", "--skip-hf", "--skip-ablation"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and "not a model preset" in err and "mae_vit_micro_patch8_64" in err
