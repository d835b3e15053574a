"""Layers found at each depth, and hooks that fire once per layer per step and always go away."""

from __future__ import annotations

import pytest
import torch
from conftest import Bare, ids
from torch import nn

from llm_moments.engine.core.hooks import StepHooks, count_hooks, find_layers, top_level_layers
from llm_moments.engine.core.timing import CpuTimer


def names(layers):
    return [(layer.name, layer.parent) for layer in layers]


# -- which layers, at which depth -----------------------------------------------------------------


def test_gpt2_blocks(tiny_gpt2):
    assert names(find_layers(tiny_gpt2, "blocks")) == [
        ("transformer.wte", None), ("transformer.wpe", None),   # transformer.drop is skipped
        ("transformer.h.0", None), ("transformer.h.1", None),
        ("transformer.ln_f", None), ("lm_head", None),
    ]


def test_gpt2_sublayers_follow_their_block(tiny_gpt2):
    got = names(find_layers(tiny_gpt2, "sublayers"))
    assert got == [
        ("transformer.wte", None), ("transformer.wpe", None),
        ("transformer.h.0", None),
        ("transformer.h.0.ln_1", 2), ("transformer.h.0.attn", 2),
        ("transformer.h.0.ln_2", 2), ("transformer.h.0.mlp", 2),
        ("transformer.h.1", None),
        ("transformer.h.1.ln_1", 7), ("transformer.h.1.attn", 7),
        ("transformer.h.1.ln_2", 7), ("transformer.h.1.mlp", 7),
        ("transformer.ln_f", None), ("lm_head", None),
    ]


def test_gpt2_leaves(tiny_gpt2):
    layers = find_layers(tiny_gpt2, "leaves")
    got = dict(names(layers))
    h0 = [l.name for l in layers].index("transformer.h.0")
    for leaf in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
        assert got[f"transformer.h.0.{leaf}"] == h0
    # Dropouts do no work at inference and are never hooked; every child is a real leaf.
    assert not any("drop" in l.name for l in layers)
    for layer in layers:
        if layer.parent is not None:
            assert not list(layer.module.children())
            assert layers[layer.parent].parent is None
            assert layer.name.startswith(layers[layer.parent].name + ".")


def test_llama_blocks_and_sublayers(tiny_llama):
    assert names(find_layers(tiny_llama, "blocks")) == [
        ("model.embed_tokens", None), ("model.layers.0", None), ("model.layers.1", None),
        ("model.norm", None), ("model.rotary_emb", None), ("lm_head", None),
    ]
    sub = names(find_layers(tiny_llama, "sublayers"))
    assert sub[:6] == [
        ("model.embed_tokens", None), ("model.layers.0", None),
        ("model.layers.0.self_attn", 1), ("model.layers.0.mlp", 1),
        ("model.layers.0.input_layernorm", 1), ("model.layers.0.post_attention_layernorm", 1),
    ]
    assert ("model.layers.1.mlp", 6) in sub


def test_llama_leaves(tiny_llama):
    got = dict(names(find_layers(tiny_llama, "leaves")))
    for leaf in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert got[f"model.layers.1.{leaf}"] is not None
    assert got["lm_head"] is None


def test_bert_blocks_and_sublayers(tiny_bert):
    assert names(find_layers(tiny_bert, "blocks")) == [
        ("embeddings", None), ("encoder.layer.0", None), ("encoder.layer.1", None), ("pooler", None),
    ]
    assert names(find_layers(tiny_bert, "sublayers")) == [
        ("embeddings", None),
        ("encoder.layer.0", None), ("encoder.layer.0.attention", 1),
        ("encoder.layer.0.intermediate", 1), ("encoder.layer.0.output", 1),
        ("encoder.layer.1", None), ("encoder.layer.1.attention", 5),
        ("encoder.layer.1.intermediate", 5), ("encoder.layer.1.output", 5),
        ("pooler", None),
    ]


def test_bert_leaves_include_the_embeddings_parts(tiny_bert):
    layers = find_layers(tiny_bert, "leaves")
    got = dict(names(layers))
    assert got["embeddings"] is None
    assert got["embeddings.word_embeddings"] == 0
    assert got["embeddings.LayerNorm"] == 0
    block0 = [l.name for l in layers].index("encoder.layer.0")
    assert got["encoder.layer.0.attention.self.query"] == block0
    assert got["encoder.layer.0.output.dense"] == block0
    assert got["pooler.dense"] is not None


def test_plain_module_at_each_depth(plain_net):
    assert names(find_layers(plain_net, "blocks")) == [
        ("embed", None), ("blocks.0", None), ("blocks.1", None), ("blocks.2", None), ("head", None)]
    assert names(find_layers(plain_net, "sublayers")) == [
        ("embed", None),
        ("blocks.0", None), ("blocks.0.norm", 1), ("blocks.0.fc", 1),
        ("blocks.1", None), ("blocks.1.norm", 4), ("blocks.1.fc", 4),
        ("blocks.2", None), ("blocks.2.norm", 7), ("blocks.2.fc", 7),
        ("head", None),
    ]
    # leaves: a top-level layer that is itself a leaf (embed, head) has no children to add
    assert names(find_layers(plain_net, "leaves")) == names(find_layers(plain_net, "sublayers"))


def test_sequential_root_is_its_own_block_list():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    assert names(find_layers(model)) == [("0", None), ("1", None), ("2", None)]


def test_model_without_a_block_list_uses_its_children():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 2))
    assert names(find_layers(model)) == [("0", None), ("1", None), ("3", None)]


def test_model_with_no_children_is_its_own_layer():
    model = Bare()
    for depth in ("blocks", "sublayers", "leaves"):
        layers = find_layers(model, depth)
        assert names(layers) == [("(model)", None)]
        assert layers[0].module is model


def test_unknown_depth_is_refused(plain_net):
    with pytest.raises(ValueError, match="depth must be one of blocks, sublayers, leaves"):
        find_layers(plain_net, "everything")


def test_top_level_layers_do_not_overlap(tiny_gpt2, tiny_llama, tiny_bert, plain_net):
    for model in (tiny_gpt2, tiny_llama, tiny_bert, plain_net):
        tops, _ = top_level_layers(model)
        mods = [m for _, m in tops]
        for i, a in enumerate(mods):
            for b in mods[i + 1:]:
                assert all(sub is not b for sub in a.modules()), "a top-level layer contains another"


# -- hooks ------------------------------------------------------------------------------------------


class Steps:
    """Collects what StepHooks reports: begins, ends (aborted or not), resolved per-layer calls."""

    def __init__(self, timer: CpuTimer):
        self.timer = timer
        self.begun = 0
        self.ended: list[bool] = []
        self.calls: list[list[int]] = []
        self.shapes: list[tuple] = []

    def begin(self, args, kwargs):
        self.begun += 1
        self.shapes.append(tuple(a.shape for a in args if torch.is_tensor(a)))
        self.timer.begin_step()

    def end(self, aborted=False):
        done = self.timer.end_step()
        self.ended.append(aborted)
        if not aborted:
            self.calls.append(done.calls)


def hooked(model, depth="blocks"):
    layers = find_layers(model, depth)
    timer = CpuTimer(len(layers))
    steps = Steps(timer)
    return StepHooks(model, layers, timer, steps.begin, steps.end), steps, layers


@pytest.mark.parametrize("depth", ["blocks", "sublayers", "leaves"])
def test_every_layer_fires_once_per_step(plain_net, depth):
    hooks, steps, layers = hooked(plain_net, depth)
    with hooks:
        for _ in range(3):
            plain_net(ids())
    assert steps.begun == 3 and steps.ended == [False] * 3
    assert steps.calls == [[1] * len(layers)] * 3
    assert count_hooks(plain_net) == 0


def test_transformers_blocks_fire_once_per_step(tiny_gpt2):
    hooks, steps, layers = hooked(tiny_gpt2, "sublayers")
    with hooks, torch.inference_mode():
        tiny_gpt2(ids(vocab=64))
        tiny_gpt2(ids(vocab=64))
    assert steps.calls == [[1] * len(layers)] * 2
    assert count_hooks(tiny_gpt2) == 0


def test_a_layer_called_twice_counts_two_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(self.a(x)))

    model = Twice()
    hooks, steps, layers = hooked(model)
    with hooks:
        model(torch.zeros(1, 4))
    assert [l.name for l in layers] == ["a", "b"]
    assert steps.calls == [[2, 1]]


def test_bare_model_fires_as_its_own_layer():
    model = Bare()
    hooks, steps, _layers = hooked(model)
    with hooks:
        model(torch.ones(4))
        model(torch.ones(4))
    assert steps.calls == [[1], [1]]
    assert steps.ended == [False, False]
    assert count_hooks(model) == 0


def test_hooks_attach_and_detach_count(plain_net):
    hooks, _, layers = hooked(plain_net)
    assert count_hooks(plain_net) == 0
    hooks.attach()
    assert hooks.attached
    assert count_hooks(plain_net) == 2 * len(layers) + 2  # a pair per layer, a pair on the root
    hooks.attach()  # idempotent
    assert count_hooks(plain_net) == 2 * len(layers) + 2
    hooks.detach()
    hooks.detach()
    assert count_hooks(plain_net) == 0 and not hooks.attached


class Boom(nn.Module):
    """Raises ``exc`` from its second block when ``armed``."""

    def __init__(self, exc: BaseException):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.exc = exc
        self.armed = True

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            if i == 1 and self.armed:
                raise self.exc
            x = block(x)
        return x


def test_hooks_go_when_the_forward_raises():
    model = Boom(RuntimeError("bad shape"))
    hooks, steps, _ = hooked(model)
    with pytest.raises(RuntimeError, match="bad shape"), hooks:
        model(torch.zeros(1, 4))
    assert count_hooks(model) == 0
    assert steps.ended == [True]  # the step is reported as cut short, not as a normal step


def test_a_failed_step_does_not_break_the_next_one():
    model = Boom(RuntimeError("once"))
    hooks, steps, _layers = hooked(model)
    with hooks:
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 4))
        model.armed = False
        model(torch.zeros(1, 4))
    assert steps.ended == [True, False]
    assert steps.calls == [[1, 1, 1]]


def test_hooks_go_on_ctrl_c():
    model = Boom(KeyboardInterrupt())
    hooks, _, _ = hooked(model)
    with pytest.raises(KeyboardInterrupt), hooks:
        model(torch.zeros(1, 4))
    assert count_hooks(model) == 0


def test_a_step_run_inside_an_except_block_is_a_normal_step(plain_net):
    # A fallback path (`except ...: model(x)`) must not look like a forward that raised.
    hooks, steps, layers = hooked(plain_net)
    with hooks:
        try:
            raise ValueError("the caller's own error, handled")
        except ValueError:
            plain_net(ids())
    assert steps.ended == [False]
    assert steps.calls == [[1] * len(layers)]


def test_a_model_that_calls_itself_is_one_step():
    class Recursive(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x, again=True):
            x = self.b(self.a(x))
            return self(x, again=False) if again else x

    model = Recursive()
    hooks, steps, _ = hooked(model)
    with hooks:
        model(torch.zeros(1, 4))
    assert steps.begun == 1
    assert steps.calls == [[2, 2]]


def test_a_one_block_model_keeps_its_block_names():
    """One block (a one-layer model, or a compare variant with all blocks but one dropped): still the
    block list, not the whole `transformer` as one layer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
    names = [n for n, _ in top_level_layers(GPT2LMHeadModel(cfg))[0]]
    assert "transformer.h.0" in names and "transformer" not in names and names[-1] == "lm_head"
