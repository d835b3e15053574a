"""Find the layers of any model at a depth, name them, and attach / detach timing hooks.

Layers are found structurally, so any transformers model (and any plain ``nn.Module``) works: the
transformer blocks are the biggest ``ModuleList`` of same-typed modules; the top-level layers are
those blocks plus every sibling met on the way down to them (embeddings, final norm, head, pooler).
Top-level layers never overlap, so their moments add up to the covered part of a step.

Attribution (header ``attribution: "enclosing"``): a module is hooked once, however many layer
entries name it (a module shared by several blocks, a model-level module handed to each block).
Each call counts to the entry whose parent is the innermost layer entry open at that moment — a
top-level entry when no layer is open, a child of block *k* while block *k* (and none of its
children) runs. A call for which no entry fits is *nested*: its time stays in the enclosing
layer's moment and it only counts in its module's first entry's nested calls. So a step's
top-level moments never overlap and the children of a layer sum to at most the layer.

Pipeline stages: a module this stage does not own is a placeholder (transformers'
``PipelineIdentityLayer``). It stays in the layer list (``present=False``), so every stage lists the
same layers, is not hooked (its moment is null: it does no work) and a placeholder block gets the
children of an owned block of the same list, with the same names, also absent. A ``synthetic``
entry (the pipeline's send/receive wait, engine/core/dist.py) has no hooks: its timer is driven
by a wrapper around the stage's communication.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DEPTHS = ("blocks", "sublayers", "leaves")

# Modules that do no work at inference: hooking them costs time and shows only noise.
_SKIP = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)

# Stand-ins for modules another pipeline stage owns (by class name: no transformers import here).
PLACEHOLDERS = frozenset({"PipelineIdentityLayer"})


def is_placeholder(mod: Any) -> bool:
    """A module that stands in for one another pipeline stage owns (it passes its input through)."""
    return type(mod).__name__ in PLACEHOLDERS


@dataclass
class Layer:
    name: str               # module path in the model, e.g. "transformer.h.3.attn"
    module: nn.Module
    parent: int | None      # index of the enclosing top-level layer; None for a top-level layer
    present: bool = True    # False: another pipeline stage owns it (a placeholder here; not hooked)
    synthetic: bool = False  # not a module of the model: timed by a wrapper (no hooks), e.g. pipeline waits
    comm: str | None = None  # a synthetic entry's collective (real layers get theirs from the TP plan)


def _block_list(model: nn.Module) -> tuple[list[str], nn.Module] | None:
    """Path (names from the root) to the biggest list of same-typed blocks, or None.

    Two blocks at least make a list; failing that, a ModuleList of one block (a one-layer model, or a
    compare variant with all blocks but one dropped) still is one, so its layers keep their names."""
    return _biggest_list(model, 2) or _biggest_list(model, 1, (nn.ModuleList,))


def _biggest_list(model: nn.Module, min_len: int,
                  kinds: tuple[type, ...] = (nn.ModuleList, nn.Sequential)) -> tuple[list[str], nn.Module] | None:
    best = None
    best_key = None
    for path, mod in model.named_modules():
        if not isinstance(mod, kinds) or len(mod) < min_len:
            continue
        # placeholders of a pipeline stage stand where blocks another stage owns would be
        types = {type(child) for child in mod if not is_placeholder(child)}
        if len(types) != 1:
            continue
        n_params = sum(p.numel() for p in mod.parameters())
        key = (n_params, len(mod), -path.count("."))
        if best_key is None or key > best_key:
            best, best_key = (path.split(".") if path else [], mod), key
    return best


def _skip(mod: nn.Module) -> bool:
    return isinstance(mod, _SKIP) and not is_placeholder(mod)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def top_level_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], set[int]]:
    """Top-level (name, module) pairs in registration order, and the ids of the block modules."""
    found = _block_list(model)
    if found is None:
        children = [(n, m) for n, m in model.named_children() if not _skip(m)]
        return (children or [("(model)", model)]), set()
    path, blocks = found
    out: list[tuple[str, nn.Module]] = []

    def walk(mod: nn.Module, prefix: str, rest: list[str]) -> None:
        if not rest:  # mod is the block list itself
            for name, child in mod.named_children():
                out.append((_join(prefix, name), child))
            return
        for name, child in mod.named_children():
            if name == rest[0]:
                walk(child, _join(prefix, name), rest[1:])
            elif not _skip(child):
                out.append((_join(prefix, name), child))

    walk(model, "", path)
    return out, {id(b) for b in blocks}


def find_layers(model: nn.Module, depth: str = "blocks") -> list[Layer]:
    """The layers to time at ``depth``; children follow their top-level layer, which is their parent."""
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {', '.join(DEPTHS)}, not {depth!r}")
    tops, block_ids = top_level_layers(model)
    # An owned block whose children name those of a placeholder block (pipeline stages list alike)
    template = next((m for _, m in tops if id(m) in block_ids and not is_placeholder(m)), None)
    layers: list[Layer] = []
    for name, mod in tops:
        parent = len(layers)
        absent = is_placeholder(mod)
        layers.append(Layer(name, mod, None, present=not absent))
        src = template if absent and id(mod) in block_ids and template is not None else mod
        kids: list[str] = []
        if depth == "sublayers" and id(mod) in block_ids:
            kids = [cname for cname, child in src.named_children() if not _skip(child)]
        elif depth == "leaves":
            kids = [cname for cname, child in src.named_modules()
                    if cname and not any(True for _ in child.children()) and not _skip(child)]
        if absent:
            layers.extend(Layer(_join(name, c), mod, parent, present=False) for c in kids)
        else:
            subs = dict(mod.named_modules())
            layers.extend(Layer(_join(name, c), subs[c], parent) for c in kids)
    return layers


# Values on the hooks' stack of open layer entries besides entry indices (which are >= 0).
ROOT = -1      # inside a step, no layer open: the "parent" of top-level entries
OUTSIDE = -2   # no step running: calls are not timed (a layer called on its own, outside the model)
NESTED = -3    # a call that counts to no entry: its time stays in the enclosing entry


def _no_nest(i: int) -> None:
    pass


class StepHooks:
    """Forward hooks on the root (step begin / end) and on every layer's module (moment start / stop).

    The root's pre-hook is prepended and its post-hook registered last, so a root that is also a
    layer still nests inside its own step. ``detach`` is idempotent; use as a context manager so the
    hooks go even when the forward raises.

    One pre/post pair per distinct module, whatever number of entries name it. The pre-hook reads
    the innermost open entry (top of ``stack``), picks the module's entry whose parent that is
    (precomputed: one comparison, or one int-keyed dict lookup for a shared module), pushes it and
    starts the timer; the post-hook pops and stops. O(1) per call, no name lookups, no sync.
    """

    def __init__(self, model: nn.Module, layers: list[Layer], timer: Any,
                 on_step_begin: Callable[[tuple, dict], None], on_step_end: Callable[[bool], None]):
        self.model = model
        self.layers = layers
        self.timer = timer
        self.on_step_begin = on_step_begin
        self.on_step_end = on_step_end
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._depth = 0
        self._exc_at_begin: BaseException | None = None
        # Open layer entries, innermost last, on top of a base: ROOT inside a step, OUTSIDE between.
        self._stack: list[int] = [OUTSIDE]

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def module_entries(self) -> list[tuple[nn.Module, list[tuple[int, int]]]]:
        """Each distinct module with its (entry index, parent code) pairs, in layer order."""
        by_id: dict[int, tuple[nn.Module, list[tuple[int, int]]]] = {}
        for i, layer in enumerate(self.layers):
            if not layer.present or layer.synthetic:
                continue  # a placeholder does no work; a synthetic entry is timed by its wrapper
            parent = ROOT if layer.parent is None else layer.parent
            _, cands = by_id.setdefault(id(layer.module), (layer.module, []))
            if all(p != parent for _, p in cands):  # the same module twice under one parent: first wins
                cands.append((i, parent))
        return list(by_id.values())

    def _make_hooks(self, cands: list[tuple[int, int]]) -> tuple[Callable, Callable]:
        stack = self._stack
        push, pop = stack.append, stack.pop
        start, stop = self.timer.start, self.timer.stop
        nest = getattr(self.timer, "nest", _no_nest)
        first = cands[0][0]
        if len(cands) == 1:
            # Default arguments are fast locals: the hot path is one compare, one append, one timer call.
            def pre(m, a, _i=first, _p=cands[0][1], _s=stack, _push=push, _start=start,
                    _out=OUTSIDE, _nested=NESTED, _nest=nest):
                top = _s[-1]
                if top == _p:
                    _push(_i)
                    _start(_i)
                elif top == _out:
                    _push(_out)
                else:
                    _push(_nested)
                    _nest(_i)
        else:
            by_parent = {p: i for i, p in cands}

            def pre(m, a, _first=first, _get=by_parent.get, _s=stack, _push=push, _start=start,
                    _out=OUTSIDE, _nested=NESTED, _nest=nest):
                top = _s[-1]
                i = _get(top)
                if i is not None:
                    _push(i)
                    _start(i)
                elif top == _out:
                    _push(_out)
                else:
                    _push(_nested)
                    _nest(_first)

        def post(m, a, o, _pop=pop, _push=push, _s=stack, _stop=stop):
            k = _pop()
            if k >= 0:
                _stop(k)
            elif not _s:  # popped the base (a call left open by a step that raised): put it back
                _push(k)

        return pre, post

    def attach(self) -> StepHooks:
        if self._handles:
            return self
        self._stack[:] = [OUTSIDE]
        try:
            self._handles.append(self.model.register_forward_pre_hook(
                self._root_pre, prepend=True, with_kwargs=True))
            for module, cands in self.module_entries():
                pre, post = self._make_hooks(cands)
                self._handles.append(module.register_forward_pre_hook(pre))
                self._handles.append(module.register_forward_hook(post))
            self._handles.append(self.model.register_forward_hook(self._root_post, always_call=True))
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._depth = 0
        self._stack[:] = [OUTSIDE]

    def _root_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._depth += 1
        if self._depth == 1:  # a model that calls itself (rare) is still one step
            # A model run inside the caller's own `except` block sees that exception all along.
            self._exc_at_begin = sys.exc_info()[1]
            self._stack[:] = [ROOT]
            self.on_step_begin(args, kwargs)

    def _root_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            # always_call hooks run inside torch's `except Exception` when the forward raised:
            # that step is cut short and is dropped rather than recorded with partial times.
            exc = sys.exc_info()[1]
            self._exc_at_begin, begun_with = None, self._exc_at_begin
            self._stack[:] = [OUTSIDE]  # also drops entries a raising forward left open
            self.on_step_end(exc is not None and exc is not begun_with)

    def __enter__(self) -> StepHooks:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()


def count_hooks(model: nn.Module) -> int:
    """Forward hooks currently attached anywhere in ``model`` (tests check they all go)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
