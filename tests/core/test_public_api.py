"""The library's surface: `from memoir_core import ...` (loaded lazily), and the wrapped layer's
inverse (enable/disable, detach back to the very module and outputs it was given)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from memoir_core import arch
from memoir_core.memory_layer import BatchRouting
from tests.support.server_utils import REPO
from tests.support.tiny import CORPUS, tiny_model, tiny_tokenizer


def test_the_public_names_load_on_first_use_only():
    code = ("import sys, memoir_core, memoir_core.config\n"
            "assert 'torch' not in sys.modules, 'memoir_core.config pulled torch in'\n"
            "from memoir_core import Memoir, MemoirConfig, SamplingParams, load_model\n"
            "from memoir_core.memoir import Memoir as M\n"
            "from memoir_core.models import load\n"
            "assert Memoir is M and load_model is load and 'Memoir' in dir(memoir_core)\n"
            "try:\n    memoir_core.nothing\nexcept AttributeError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "has no attribute 'nothing'" in r.stdout, r.stderr


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits


def test_the_memory_layer_disables_and_detaches_to_the_original_module():
    from memoir_core import Memoir, MemoirConfig, SamplingParams

    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    reference = copy.deepcopy(model)
    spec = arch.spec_for(model)
    config = MemoirConfig(k=32, tau=0.5, max_steps=60, stop_loss=0.05, lr=0.5)
    path = f"{spec.blocks}.{config.resolved(4, 128).layer}.{spec.down}"
    original = arch.get_path(model, path)
    m = Memoir(model, tok, config, background=CORPUS[:12])
    prompt = "who is the chief executive of the company"
    ids = tok(prompt).input_ids
    expected = logits(reference, ids)
    m.edit(prompt, "jane roe")
    params = SamplingParams(max_new_tokens=3)
    edited = m.generate([prompt], params)[0]
    assert edited.decision.route is not None
    routed = BatchRouting.fixed([edited.decision])
    with m.layer.use(routed):
        on = logits(model, ids)
    assert not torch.equal(on, expected)
    m.layer.disable()  # routed, but nothing is added: the base model's logits, bit for bit
    with m.layer.use(BatchRouting.fixed([edited.decision])):
        assert torch.equal(logits(model, ids), expected)
    assert m.generate([prompt], params)[0].decision.route is not None  # decisions still made
    m.layer.enable()
    with m.layer.use(BatchRouting.fixed([edited.decision])):
        assert torch.equal(logits(model, ids), on)
    assert m.generate([prompt], params)[0].text == edited.text

    layer = m.layer
    assert layer.detach(model) is original and arch.get_path(model, path) is original
    assert torch.equal(logits(model, ids), expected)  # the model as it was given, bit for bit
    with pytest.raises(ValueError, match="not in the given model"):
        layer.detach(model)
