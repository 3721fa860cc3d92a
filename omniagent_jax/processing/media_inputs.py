"""The processor's media inputs as one frozen value: `MediaInputs`.

Its fields are the HF input names (`pixel_values`, `image_grid_thw`, `pixel_values_videos`,
`video_grid_thw`, `video_second_per_grid`, `input_features`, `feature_attention_mask`) plus the
`use_audio_in_video` flag, and it behaves as a read-only mapping of the fields that are set, so
`model(input_ids, attention_mask, **media)` passes exactly the keyword arguments the processor's
dict would. It knows its items (audios, then images, then videos, each in conversation order, as
the towers emit them), their token counts, each item's feature rows and a content key per item.
numpy only: the model turns it into embeddings (`Thinker.media_embeddings`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from omniagent_jax.processing import budgets
from omniagent_jax.processing.layout import audio_token_count, vision_token_count

KINDS = ("audio", "image", "video")  # the order the towers' outputs fill the placeholders of each kind
# Per kind: (feature rows field, companion field: the grid or the frame mask).
_FIELDS = {
    "audio": ("input_features", "feature_attention_mask"),
    "image": ("pixel_values", "image_grid_thw"),
    "video": ("pixel_values_videos", "video_grid_thw"),
}
ARRAY_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "video_second_per_grid",
    "input_features",
    "feature_attention_mask",
)


@dataclasses.dataclass(frozen=True)
class MediaItem:
    """One image, video or audio of a `MediaInputs`: `index` counts items of its kind."""

    kind: str  # "audio" | "image" | "video"
    index: int
    num_tokens: int  # placeholder tokens it fills


@dataclasses.dataclass(frozen=True, eq=False)
class MediaInputs(Mapping):
    """Media of one prompt or one batch (items concatenated in batch order), HF-named.

    Every rows field needs its companion (`pixel_values` ↔ `image_grid_thw`, `pixel_values_videos` ↔
    `video_grid_thw`, `input_features` ↔ `feature_attention_mask`); a companion or
    `video_second_per_grid` without its rows is an error too. Arrays are stored as given (numpy).
    """

    pixel_values: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None
    pixel_values_videos: np.ndarray | None = None
    video_grid_thw: np.ndarray | None = None
    video_second_per_grid: np.ndarray | None = None
    input_features: np.ndarray | None = None
    feature_attention_mask: np.ndarray | None = None
    use_audio_in_video: bool = False

    def __post_init__(self):
        for key in ARRAY_KEYS:
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, np.asarray(value))
        object.__setattr__(self, "use_audio_in_video", bool(self.use_audio_in_video))
        for rows, companion in _FIELDS.values():
            if getattr(self, rows) is not None and getattr(self, companion) is None:
                raise ValueError(f"{companion} is required with {rows}")
            if getattr(self, rows) is None and getattr(self, companion) is not None:
                raise ValueError(f"{companion} given without {rows}")
        if self.video_second_per_grid is not None and self.pixel_values_videos is None:
            raise ValueError("video_second_per_grid given without pixel_values_videos")
        for kind in ("image", "video"):
            rows, grid = _FIELDS[kind]
            if getattr(self, rows) is not None:
                want = int(self._grid(kind).prod(axis=1).sum())
                if len(getattr(self, rows)) != want:
                    raise ValueError(f"{rows} has {len(getattr(self, rows))} rows but {grid} describes {want} patches")
        if self.input_features is not None and len(self.input_features) != len(self.feature_attention_mask):
            raise ValueError(
                f"input_features holds {len(self.input_features)} audios but feature_attention_mask "
                f"{len(self.feature_attention_mask)}"
            )

    @classmethod
    def from_processor_output(cls, outputs: Mapping[str, Any], use_audio_in_video: bool | None = None) -> MediaInputs:
        """The media fields of a processor output (or an SFT sample); other keys (`input_ids`, ...)
        are ignored, as are absent or None ones. `use_audio_in_video` defaults to the mapping's own
        `use_audio_in_video` entry, else False (the processor's output does not carry the flag)."""
        if use_audio_in_video is None:
            use_audio_in_video = bool(np.asarray(outputs.get("use_audio_in_video", False)))
        arrays = {k: outputs[k] for k in ARRAY_KEYS if outputs.get(k) is not None}
        return cls(**arrays, use_audio_in_video=use_audio_in_video)

    # ------------------------------------------------------------------ mapping behaviour

    def keys(self) -> list[str]:
        """The set fields (arrays that are not None) and `use_audio_in_video`: the model's keyword arguments."""
        return [k for k in ARRAY_KEYS if getattr(self, k) is not None] + ["use_audio_in_video"]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MediaInputs):
            return NotImplemented
        return self.keys() == other.keys() and all(np.array_equal(self[k], other[k]) for k in self.keys())

    __hash__ = None  # arrays inside: unhashable, as a dict

    def as_kwargs(self) -> dict[str, Any]:
        return {k: self[k] for k in self.keys()}

    # ------------------------------------------------------------------ items

    @property
    def empty(self) -> bool:
        """True when there is no image, video or audio."""
        return all(getattr(self, _FIELDS[kind][0]) is None for kind in KINDS)

    def token_counts(self, kind: str, merge_size: int = budgets.MERGE_SIZE) -> list[int]:
        """Placeholder tokens of each item of `kind`, in order (vision counts depend on the tower's merge size)."""
        if getattr(self, _FIELDS[kind][0]) is None:
            return []
        if kind == "audio":
            return [audio_token_count(int(n)) for n in self.audio_lengths()]
        return [vision_token_count(g, merge_size) for g in self._grid(kind)]

    def media_items(self, merge_size: int = budgets.MERGE_SIZE) -> list[MediaItem]:
        """Every item: audios, then images, then videos, each in order."""
        return [MediaItem(kind, i, n) for kind in KINDS for i, n in enumerate(self.token_counts(kind, merge_size))]

    def audio_lengths(self) -> np.ndarray | None:
        """Valid mel frames of each audio (what TMRoPE lays audio positions out with), or None."""
        return None if self.feature_attention_mask is None else self.feature_attention_mask.sum(axis=-1)

    def rows(self, item: MediaItem) -> tuple[np.ndarray, np.ndarray]:
        """The tower inputs of one item: `(input_features[i:i+1], feature_attention_mask[i:i+1])` for an
        audio, `(its pixel rows, grid[i:i+1])` for an image or video."""
        if item.kind == "audio":
            return self.input_features[item.index : item.index + 1], self.feature_attention_mask[item.index : item.index + 1]
        rows, _ = _FIELDS[item.kind]
        grid = self._grid(item.kind)
        offsets = np.concatenate([[0], np.cumsum(grid.prod(axis=1))]).astype(int)
        return getattr(self, rows)[offsets[item.index] : offsets[item.index + 1]], grid[item.index : item.index + 1]

    def select(self, kind: str, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The tower inputs of several items of one kind, concatenated in the given order (one tower call)."""
        parts = [self.rows(MediaItem(kind, int(i), 0)) for i in indices]
        return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])

    def content_key(self, item: MediaItem) -> int:
        """A 64-bit hash of the item's kind and tower inputs: equal keys mean equal embeddings."""
        a, b = self.rows(item)
        data = item.kind.encode() + np.ascontiguousarray(a).tobytes() + np.ascontiguousarray(b).tobytes()
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")

    def placeholder_slots(self, input_ids: np.ndarray, placeholder_ids: Mapping[str, int],
                          merge_size: int = budgets.MERGE_SIZE) -> list[tuple[MediaItem, np.ndarray]]:
        """Each item with the indices (into the flattened `input_ids`) of the placeholder tokens it fills.

        The k-th item of a kind fills the k-th run of that kind's placeholders in sequence order.
        Raises when the placeholders of a kind (`placeholder_ids[kind]`) and the media disagree in number.
        """
        flat = np.asarray(input_ids).reshape(-1)
        out = []
        for kind in KINDS:
            counts = self.token_counts(kind, merge_size)
            where = np.flatnonzero(flat == placeholder_ids[kind])
            if len(where) != sum(counts):
                raise ValueError(
                    f"{kind} placeholder/feature mismatch: input_ids hold {len(where)} {kind} placeholder tokens "
                    f"but the {kind} inputs produce {sum(counts)} tokens"
                )
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
            out += [(MediaItem(kind, i, n), where[offsets[i] : offsets[i + 1]]) for i, n in enumerate(counts)]
        return out

    def _grid(self, kind: str) -> np.ndarray:
        return np.asarray(getattr(self, _FIELDS[kind][1]), np.int64).reshape(-1, 3)
