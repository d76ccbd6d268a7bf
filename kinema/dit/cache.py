"""The key/value cache of a causal DiT: streaming generation, one chunk of latent frames at a time.

With block-causal attention, latent frame i only sees frames <= i, so a chunk can be sampled after the chunks before
it, from their keys and values alone. Two ways to fill the cache (`past`):

    "clean"  (default; CausVid, self forcing) the chunks sampled so far are clean: once a chunk is sampled, one more
             DiT call at time 0 (`record_slot`) stores its keys and values, and every call of the next chunk attends
             to them. The model is trained for this by holding a prefix of latent frames clean (given frames).
    "joint"  the past at the same noise level as the chunk, step by step, exactly as joint sampling of the whole
             video sees it: one slot per DiT call of a chunk's sampling loop (a guided call carries both guidance
             branches as one batch), and the k-th call of a chunk attends to the k-th calls of the past chunks.
             Samplers are deterministic in their calls, so they line up, and streaming equals joint sampling.

    cache = KVCache(num_layers, tokens_per_frame, window=4)
    for each chunk:
        cache.start_chunk()
        ... dit(x_chunk, t, text, kv=cache.next_slot()) for every sampler call ...
        dit(clean_chunk, 0, text, kv=cache.record_slot())   # "clean" only
        cache.end_chunk(frames_in_chunk)

`window` bounds the past latent frames attended to, so the cost per chunk stays constant however long the video.
"""

from __future__ import annotations

import torch


class KVSlot:
    """The past keys/values that one DiT call attends to, per block: (B, heads, L_past, head_dim) each."""

    def __init__(self, cache: "KVCache", index: int, record: bool):
        self.cache, self.index, self.record = cache, index, record

    @property
    def frame_offset(self) -> int:
        """Absolute latent-frame index of the chunk being sampled (its RoPE positions start here)."""
        return self.cache.frames_done

    @property
    def past_frames(self) -> int:
        return self.cache.past_frames(self.index)

    def past(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        layers = self.cache.slots[self.index] if self.index < len(self.cache.slots) else None
        return layers[layer] if layers else None

    def add(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Queue this call's keys/values for the chunks to come (they join the cache at `end_chunk`)."""
        if self.record:
            self.cache.pending.setdefault(self.index, {})[layer] = (k, v)


class KVCache:
    """Keys/values of the past latent frames of a causal DiT, one slot per sampler call, trimmed to a window."""

    def __init__(self, num_layers: int, tokens_per_frame: int, window: int | None = None, past: str = "clean"):
        if window is not None and window < 1:
            raise ValueError(f"window must be at least 1 latent frame, got {window}")
        if past not in ("clean", "joint"):
            raise ValueError(f"past must be 'clean' or 'joint', got {past!r}")
        self.num_layers, self.tokens_per_frame, self.window, self.past = num_layers, tokens_per_frame, window, past
        self.slots: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # slot -> layer -> (k, v)
        self.pending: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.frames_done = 0  # latent frames generated so far
        self.calls = 0

    def start_chunk(self) -> None:
        self.calls, self.pending = 0, {}

    def next_slot(self) -> KVSlot:
        """The slot of the chunk's next sampler call."""
        if self.past == "clean":
            return KVSlot(self, 0, record=False)
        slot = KVSlot(self, self.calls, record=True)
        self.calls += 1
        return slot

    def record_slot(self) -> KVSlot:
        """"clean": the slot of the call on the finished chunk (time 0) whose keys/values join the cache."""
        if self.past != "clean":
            raise ValueError("record_slot is for a cache of clean past frames")
        return KVSlot(self, 0, record=True)

    def past_frames(self, index: int) -> int:
        if index >= len(self.slots):
            return 0
        return self.slots[index][0][0].shape[2] // self.tokens_per_frame

    def end_chunk(self, frames: int) -> None:
        """Append the finished chunk's keys/values to every slot, then drop frames that left the window."""
        if self.slots and len(self.pending) != len(self.slots):
            raise RuntimeError(f"chunk made {len(self.pending)} DiT calls, the cache holds {len(self.slots)} slots")
        keep = None if self.window is None else self.window * self.tokens_per_frame
        new = []
        for index in sorted(self.pending):
            layers = []
            for layer in range(self.num_layers):
                k, v = self.pending[index][layer]
                if index < len(self.slots):
                    pk, pv = self.slots[index][layer]
                    k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
                layers.append((k[:, :, -keep:], v[:, :, -keep:]) if keep else (k, v))
            new.append(layers)
        self.slots, self.pending = new, {}
        self.frames_done += frames

    @property
    def batch(self) -> int:
        """Rows of the past held (a guided model's batch carries both guidance branches); 0 while empty."""
        return self.slots[0][0][0].shape[0] if self.slots else 0

    def keep_rows(self, rows: slice) -> None:
        """Keep only these batch rows of the past, e.g. the conditional half when a stream stops guiding."""
        self.slots = [[(k[rows], v[rows]) for k, v in layers] for layers in self.slots]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layers in self.slots for kv in layers for t in kv)
