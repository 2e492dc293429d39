"""quantizers.storage: every tensor counted once, tied weights included."""

from quantizers.storage import model_storage_bytes
from tests.models.conftest import tiny


def test_storage_counts_every_tensor_once_tied_weights_included():
    model, _ = tiny("opt")
    params = list(model.parameters())  # parameters() yields a tied tensor once
    naive = sum(t.numel() * t.element_size() for t in model.state_dict().values())  # lists both tied names
    once = sum(t.numel() * t.element_size() for t in params + list(model.buffers()))
    assert model_storage_bytes(model) == once
    assert naive - once == model.lm_head.weight.numel() * 4  # exactly the tied copy
