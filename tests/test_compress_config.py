"""Config parsing/validation: every bad input raises CompressionConfigError before any model is touched."""

from __future__ import annotations

import json

import pytest

from kick_models.compress.config import (
    CalibrationConfig,
    CompressionConfigError,
    PruneConfig,
    QuantConfig,
    parse_prune_args,
    parse_quant_args,
)


def test_prune_args_cast_from_strings_and_lm_eval_casts():
    cfg, rest = parse_prune_args({"method": "wanda", "sparsity": "0.6", "calib": "c4", "nsamples": "16",
                                  "seqlen": 512.0, "seed": "3", "pretrained": "x", "dtype": "float32"})
    assert cfg == PruneConfig("wanda", 0.6, calibration=CalibrationConfig("c4", 16, 512, 3))
    assert rest == {"pretrained": "x", "dtype": "float32"}
    cfg, _ = parse_prune_args({"method": "sparsegpt", "sparsity_type": "2:4", "blocksize": "64", "damp": "0.05"})
    assert (cfg.sparsity, cfg.nm, cfg.blocksize, cfg.damp) == (0.5, (2, 4), 64, 0.05)
    cfg, _ = parse_prune_args({"method": "wanda", "sparsity_type": "1:4"})
    assert cfg.sparsity == 0.25  # N:M without explicit sparsity -> N/M
    cfg, _ = parse_prune_args({"method": "wanda", "sparsity_type": "4:8", "sparsity": 0.5})  # consistent: fine
    assert cfg.nm == (4, 8)
    cfg, _ = parse_prune_args({"method": "wanda", "use_variant": "True"})
    assert cfg.use_variant is True


def test_quant_args_cast_and_defaults():
    cfg, rest = parse_quant_args({"wbits": "3", "groupsize": -1.0, "act_order": "true", "sym": 1, "pretrained": "m"})
    assert (cfg.method, cfg.wbits, cfg.groupsize, cfg.act_order, cfg.sym) == ("gptq", 3, -1, True, True)
    assert cfg.calibration.source == "wikitext2"
    assert rest == {"pretrained": "m"}
    cfg, _ = parse_quant_args({"method": "rtn", "wbits": 8})
    assert cfg.to_dict()["calibration"] is None
    json.dumps(cfg.to_dict())
    json.dumps(PruneConfig("sparsegpt").to_dict())


BAD_PRUNE = [
    ({"method": "obs"}, "method"),
    ({}, "method"),
    ({"method": "wanda", "sparsity": -0.1}, "sparsity"),
    ({"method": "wanda", "sparsity": 1.0}, "sparsity"),
    ({"method": "wanda", "sparsity": 1.5}, "sparsity"),
    ({"method": "wanda", "sparsity": "half"}, "sparsity"),
    ({"method": "wanda", "sparsity": "nan"}, "sparsity"),
    ({"method": "wanda", "sparsity": True}, "sparsity"),
    ({"method": "wanda", "sparsity_type": "2:x"}, "sparsity_type"),
    ({"method": "wanda", "sparsity_type": "4:2"}, "sparsity_type"),
    ({"method": "wanda", "sparsity_type": "4:4"}, "sparsity_type"),
    ({"method": "wanda", "sparsity_type": "2:0"}, "sparsity_type"),
    ({"method": "wanda", "sparsity_type": "0:4"}, "sparsity_type"),
    ({"method": "wanda", "sparsity_type": "-1:4"}, "sparsity_type"),
    ({"method": "wanda", "sparsity_type": "structured"}, "sparsity_type"),
    ({"method": "wanda", "sparsity_type": "2:4", "sparsity": 0.2}, "sparsity=0.2"),
    ({"method": "wanda", "nsamples": 0}, "nsamples"),
    ({"method": "wanda", "nsamples": -4}, "nsamples"),
    ({"method": "wanda", "nsamples": "1.5"}, "nsamples"),
    ({"method": "wanda", "seqlen": 0}, "seqlen"),
    ({"method": "wanda", "seqlen": "long"}, "seqlen"),
    ({"method": "sparsegpt", "use_variant": True}, "use_variant"),
    ({"method": "wanda", "use_variant": True, "sparsity_type": "2:4"}, "use_variant"),
    ({"method": "wanda", "use_variant": "maybe"}, "use_variant"),
    ({"method": "magnitude", "calib": "c4"}, "calib"),
    ({"method": "magnitude", "nsamples": 8}, "nsamples"),
    ({"method": "wanda", "damp": 0.1}, "damp"),
    ({"method": "sparsegpt", "damp": 0}, "damp"),
    ({"method": "sparsegpt", "blocksize": 0}, "blocksize"),
    ({"method": "sparsegpt", "blocksize": 126, "sparsity_type": "2:4"}, "blocksize"),
    ({"method": "wanda", "wbits": 4}, "wbits"),
    ({"method": "wanda", "calib": "/no/such/file.jsonl"}, "does not exist"),
    ({"method": "wanda", "calib": "data.csv"}, "calib"),
    ({"method": "wanda", "calib": ""}, "calib"),
]


@pytest.mark.parametrize("args, needle", BAD_PRUNE, ids=[json.dumps(a) for a, _ in BAD_PRUNE])
def test_bad_prune_args(args, needle):
    with pytest.raises(CompressionConfigError) as err:
        parse_prune_args(args)
    assert needle in str(err.value)


BAD_QUANT = [
    ({"method": "awq"}, "method"),
    ({"wbits": 5}, "wbits"),
    ({"wbits": 16}, "wbits"),
    ({"wbits": "four"}, "wbits"),
    ({"wbits": 4.5}, "wbits"),
    ({"groupsize": 0}, "groupsize"),
    ({"groupsize": -2}, "groupsize"),
    ({"groupsize": "-2.0"}, "groupsize"),
    ({"static_groups": True, "groupsize": -1}, "static_groups"),
    ({"method": "rtn", "act_order": True}, "act_order"),
    ({"method": "rtn", "static_groups": True}, "static_groups"),
    ({"method": "rtn", "true_sequential": True}, "true_sequential"),
    ({"method": "rtn", "calib": "c4"}, "calib"),
    ({"method": "rtn", "damp": 0.1}, "damp"),
    ({"damp": -0.01}, "damp"),
    ({"damp": 2}, "damp"),
    ({"blocksize": -1}, "blocksize"),
    ({"act_order": "sometimes"}, "act_order"),
    ({"sparsity": 0.5}, "sparsity"),
    ({"nsamples": 0}, "nsamples"),
    ({"seqlen": -1}, "seqlen"),
]


@pytest.mark.parametrize("args, needle", BAD_QUANT, ids=[json.dumps(a) for a, _ in BAD_QUANT])
def test_bad_quant_args(args, needle):
    with pytest.raises(CompressionConfigError) as err:
        parse_quant_args(args)
    assert needle in str(err.value)


def test_error_message_names_value_and_allowed():
    with pytest.raises(CompressionConfigError, match=r"wbits=5.*2, 3, 4, 8"):
        parse_quant_args({"wbits": 5})
    with pytest.raises(CompressionConfigError, match=r"N/M = 0.5"):
        parse_prune_args({"method": "wanda", "sparsity_type": "2:4", "sparsity": 0.2})


def test_dataclasses_validate_direct_construction():
    with pytest.raises(CompressionConfigError):
        PruneConfig("wanda", sparsity=1.0)
    with pytest.raises(CompressionConfigError):
        QuantConfig(wbits=6)
    with pytest.raises(CompressionConfigError):
        CalibrationConfig(nsamples=0)
    assert PruneConfig("wanda", sparsity_type="2:4").sparsity == 0.5
    assert PruneConfig("magnitude").sparsity == 0.5


def test_api_validates_before_touching_the_model():
    """The model argument is None: any use of it would raise something else than CompressionConfigError."""
    from kick_models import prune, quantize

    with pytest.raises(CompressionConfigError):
        prune(None, None, method="wanda", sparsity=1.2)
    with pytest.raises(CompressionConfigError):
        prune(None, None, method="sparsegpt", sparsity=0.2, sparsity_type="2:4")
    with pytest.raises(CompressionConfigError):
        prune(None, None, method="wanda", calibration="/missing/calib.parquet")
    with pytest.raises(CompressionConfigError):
        quantize(None, None, wbits=5)
    with pytest.raises(CompressionConfigError):
        quantize(None, None, groupsize=0)
