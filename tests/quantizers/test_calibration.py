"""quantizers.calibration and GPTQ over a whole model: the sequential pass gives each decoder layer the outputs of the
already-quantized layers below it, shared inputs build one Hessian, GPTQ beats round-to-nearest on every layer's
output error, the model comes back with its weights, and quantize_model builds its layers from the pass' codes.

The model: a tiny random Llama (2 decoder layers, hidden 64, groups of 32) on byte-level token ids of real text.
"""

import copy

import pytest
import torch

from harness.models.quantize import quantize_model
from quantizers import packing
from quantizers.calibration import (
    CalibrationConfig,
    _Stop,
    decoder_layers,
    first_layer_inputs,
    input_hooks,
    output_error,
)
from quantizers.gptq import GPTQConfig
from quantizers.gptq.solver import HessianAccumulator, gptq_quantize
from tests.models.conftest import TEXT, tiny


def batches(tokenizer, n=4, seq_len=48):
    ids = torch.tensor(tokenizer(TEXT * 8)["input_ids"])
    return list(ids[: n * seq_len].view(n, seq_len).split(2))


def gptq(**fields):
    return GPTQConfig(bits=fields.pop("bits", 3), group_size=fields.pop("group_size", 32), compute_dtype="float32",
                      hessian_dtype=fields.pop("hessian_dtype", "float64"), **fields)


@pytest.fixture(scope="module")
def calibrated():
    model, tokenizer = tiny("llama")
    original = copy.deepcopy(model)
    cal = batches(tokenizer)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    result = gptq().calibrate(model, names, cal)
    return original, model, cal, names, result


def codes(qt):
    return packing.unpack(qt.qdata, qt.bits, qt.numel).view(qt.shape)


def test_every_layer_beats_round_to_nearest_on_its_calibration_output_error(calibrated):
    *_, names, result = calibrated
    assert set(result) == set(names)
    for name, layer in result.items():  # GPTQ minimises exactly this error; RTN is its H = I special case
        assert layer.output_error < layer.rtn_output_error, name


def test_the_model_keeps_its_full_precision_weights(calibrated):
    original, model, *_ = calibrated
    for (name, a), b in zip(original.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the pass swaps quantized weights in only to compute the next inputs


def test_each_layer_is_calibrated_on_the_outputs_of_the_quantized_layers_below(calibrated):
    """Rebuilt the long way: layer 1's inputs are captured from a whole-model forward with layer 0's linears
    replaced by their dequantized GPTQ weights; GPTQ on the Hessian of those inputs gives the pass' codes."""
    original, _, cal, names, result = calibrated
    model = copy.deepcopy(original)
    for name in names:
        if name.startswith("model.layers.0."):
            model.get_submodule(name).weight.data = result[name].quantized.dequantize(torch.float32)
    inputs = first_layer_inputs(model, decoder_layers(model)[1:], cal)  # what layer 1 receives
    hidden = torch.cat([args[0] if args else kwargs["hidden_states"] for args, kwargs in inputs])
    layer1 = model.model.layers[1]
    acc = HessianAccumulator(hidden.shape[-1])
    acc.add(layer1.input_layernorm(hidden))
    w = layer1.self_attn.q_proj.weight
    expected = gptq_quantize(w, acc.hessian, 3, 32, name="q")
    assert torch.equal(codes(expected), codes(result["model.layers.1.self_attn.q_proj"].quantized))


def test_linears_reading_one_input_share_one_hessian():
    model, tokenizer = tiny("llama")
    layer = model.model.layers[0]
    linears = {f"l.{n}": m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    seen = []
    owners, remove = input_hooks(linears, lambda owner, x: seen.append(owner))
    with torch.no_grad():
        model(batches(tokenizer)[0])
    remove()
    assert owners["l.self_attn.k_proj"] == owners["l.self_attn.v_proj"] == "l.self_attn.q_proj"
    assert owners["l.mlp.up_proj"] == "l.mlp.gate_proj"
    assert owners["l.self_attn.o_proj"] == "l.self_attn.o_proj" and owners["l.mlp.down_proj"] == "l.mlp.down_proj"
    assert len(seen) == 4  # q/k/v, o, gate/up, down: four inputs, four Hessians


def test_with_its_layer_the_hooks_stop_the_forward_once_every_linear_has_read_its_input():
    """The collect pass needs the linears' inputs, not the layer's output: the last linear (down_proj) is not run,
    and what each linear is handed is what a full forward hands it."""
    model, tokenizer = tiny("llama")
    layer = model.model.layers[0]
    linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    inputs = first_layer_inputs(model, decoder_layers(model), batches(tokenizer))

    def collect(stop: bool):
        got, ran = {}, []
        handle = linears["mlp.down_proj"].register_forward_hook(lambda *_: ran.append(True))
        owners, remove = input_hooks(linears, lambda owner, x: got.setdefault(owner, []).append(x.clone()),
                                     layer if stop else None)
        with torch.no_grad():
            for args, kwargs in inputs:
                try:
                    layer(*args, **kwargs)
                except _Stop:  # the pass' own stop signal, which sequential_pass's run() catches
                    assert stop
        remove()
        handle.remove()
        return got, owners, len(ran)

    stopped, owners_stopped, ran_stopped = collect(stop=True)
    full, owners_full, ran_full = collect(stop=False)
    assert ran_stopped == 0 and ran_full == len(inputs)
    assert owners_stopped == owners_full
    assert stopped.keys() == full.keys() == {"self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"}
    for owner in full:
        assert all(torch.equal(a, b) for a, b in zip(stopped[owner], full[owner], strict=True)), owner


def test_output_error_from_the_hessian_equals_the_direct_one():
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(200, 32, generator=gen, dtype=torch.float64), torch.randn(8, 32, generator=gen, dtype=torch.float64)
    w_hat = w + 0.1 * torch.randn(8, 32, generator=gen, dtype=torch.float64)
    acc = HessianAccumulator(32)
    acc.add(x)
    direct = torch.linalg.norm((w - w_hat) @ x.T) / torch.linalg.norm(w @ x.T)
    # float64 traces against a float64 direct product: agreement to ~1e-12 relative; 1e-9 leaves margin
    assert output_error(w, w_hat, acc.hessian) == pytest.approx(direct.item(), rel=1e-9)


def test_quantize_model_builds_its_layers_from_the_calibrated_codes():
    model, tokenizer = tiny("llama")
    cal = batches(tokenizer)
    reference = gptq().calibrate(copy.deepcopy(model), [n for n, m in model.named_modules()
                                                        if isinstance(m, torch.nn.Linear) and n != "lm_head"], cal)
    report = quantize_model(model, gptq(), module="harness", calibration=cal)
    for name, layer in reference.items():
        assert torch.equal(codes(model.get_submodule(name).quantized), codes(layer.quantized)), name
    assert report.quantize_seconds > 0 and report.calibration_peak_bytes > 0
    assert all(r.output_error < r.rtn_output_error for r in report.layers)


def test_a_calibrated_quantizer_without_calibration_inputs_is_refused():
    model, _ = tiny("llama")
    with pytest.raises(ValueError, match="gptq is calibrated: quantize_model needs calibration batches"):
        quantize_model(model, gptq(), module="harness")


def test_without_a_hessian_gptq_rounds_to_nearest_on_intk_grid():
    from quantizers.intk import IntKConfig

    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    ours = gptq().build().quantize(w)
    rtn = IntKConfig(bits=3, group_size=32).build().quantize(w)
    assert torch.equal(codes(ours), codes(rtn)) and torch.equal(ours.scale, rtn.scale)


@pytest.mark.parametrize("fields, match", [
    ({"bits": 5}, r"gptq.bits=5 is not accepted; use one of \(2, 3, 4, 8\)"),
    ({"act_order": True}, "gptq.act_order=true needs gptq.static_groups=true"),
    ({"damp": 1.5}, "gptq.damp=1.5 is not accepted"),
    ({"hessian_dtype": "float16"}, "gptq.hessian_dtype='float16' is not accepted"),
])
def test_bad_gptq_settings_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        gptq(**fields)


@pytest.mark.parametrize("fields, match", [
    ({"samples": 0}, "calibration.samples=0 is not accepted; use a positive integer"),
    ({"split": "dev"}, r"calibration.split='dev' is not accepted; use one of \['train', 'validation', 'test'\]"),
])
def test_bad_calibration_settings_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        CalibrationConfig(**fields)
