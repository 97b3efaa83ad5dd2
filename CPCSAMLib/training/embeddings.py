"""Frozen-encoder mode: image embeddings computed once per run (:class:`EmbeddingCache`) and kept
between runs on disk (:class:`EmbeddingStore`)."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from .. import dataset as ds
from ..errors import InputError
from .folder import pid_alive


class EmbeddingStore:
    """Content-addressed embeddings on disk, so that a later run on the same images skips the encoder.

    One file per encoder input: the key hashes the encoder's weights, the autocast dtype and the
    exact (augmented) image array, so a hit is the embedding the encoder would compute again.
    Files are written atomically (``<key>.<pid>.tmp``, then renamed); temporary files of processes
    that no longer run are removed when the store is opened; an unreadable file is recomputed.
    """

    def __init__(self, folder: str | Path, model, amp_dtype) -> None:
        h = hashlib.sha1()
        state = model.image_encoder.state_dict()
        # LoRA at its initial state (B = 0) leaves the encoder's output unchanged: its random A must not
        # change the key; trained LoRA weights do
        identity = all(torch.count_nonzero(t) == 0 for k, t in state.items() if ".lora_b" in k)
        features = getattr(model, "neck_trainable", False)  # features before the neck: its weights do not count
        for name, t in sorted(state.items()):
            if (identity and ".lora_" in name) or (features and name.startswith("neck.")):
                continue
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        h.update(f"{model.input_size}|{amp_dtype}{'|before-neck' if features else ''}".encode())
        self.folder = Path(folder) / h.hexdigest()[:16]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--embedding-store: cannot create {self.folder} ({exc}); give a writable folder") from exc
        self.hits = self.misses = self.write_errors = 0
        self.removed_stale = self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> int:
        removed = 0
        for tmp in self.folder.glob("*.tmp"):
            pid = tmp.suffixes[-2][1:] if len(tmp.suffixes) >= 2 else ""
            if pid.isdigit() and pid_alive(int(pid)):
                continue
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    def _path(self, image: np.ndarray) -> Path:
        a = np.ascontiguousarray(image, dtype=np.float32)
        return self.folder / (hashlib.sha1(str(a.shape).encode() + a.tobytes()).hexdigest() + ".pt")

    def get(self, image: np.ndarray) -> Optional[torch.Tensor]:
        path = self._path(image)
        if path.is_file():
            try:
                t = torch.load(path, map_location="cpu", weights_only=True)
                self.hits += 1
                return t
            except Exception:  # noqa: BLE001 - a damaged file: recompute and overwrite
                pass
        self.misses += 1
        return None

    def put(self, image: np.ndarray, embedding: torch.Tensor) -> None:
        """Writes one embedding; a failed write (disk full, read-only folder) only costs the reuse."""
        path = self._path(image)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            torch.save(embedding.detach().cpu().clone(), tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError
            self.write_errors += 1
            if self.write_errors == 1:
                print(f"cpcsam: could not write to the embedding store {self.folder} ({exc}); "
                      "training goes on without storing", file=sys.stderr)
            try:
                tmp.unlink()
            except OSError:
                pass


class EmbeddingCache:
    """The embeddings of each slice, computed once (``views`` per slice: the original and augmented
    copies, labels augmented jointly), kept in bf16 (CPU) or fp16; with a ``store``, read from and
    written to disk. ``check(done, total)`` runs before each batch of slices (cancel, progress), with
    the number of embeddings done and to do."""

    def __init__(self, model, slices: ds.SliceSet, views: int, rng: np.random.Generator, device, amp_dtype,
                 batch_size: int = 8, check: Optional[Callable[[int, int], None]] = None,
                 store: Optional[EmbeddingStore] = None) -> None:
        n = len(slices)
        self.views = views = max(1, views)
        self.dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
        self.embeddings: Optional[torch.Tensor] = None
        self.labels = None if slices.labels is None else np.empty((n, views) + slices.labels.shape[1:], np.uint8)
        self.model, self.device, self.amp_dtype, self.store = model, device, amp_dtype, store
        model.eval()
        try:
            with torch.no_grad():
                for v in range(views):
                    for s in range(0, n, batch_size):
                        if check:
                            check(v * n + s, views * n)
                        self._fill(slices, v, range(s, min(n, s + batch_size)), rng)
        finally:
            model.train()

    def _fill(self, slices: ds.SliceSet, view: int, rows: range, rng: np.random.Generator) -> None:
        imgs = []
        for i in rows:
            img = slices.images[i]
            lab = slices.labels[i] if slices.labels is not None else None
            if view > 0:
                img, lab = ds.augment(img, lab, rng)
            imgs.append(img)
            if lab is not None:
                self.labels[i, view] = lab
        embs: List[Optional[torch.Tensor]] = [self.store.get(a) if self.store else None for a in imgs]
        todo = [k for k, e in enumerate(embs) if e is None]
        if todo:
            x = torch.from_numpy(np.stack([imgs[k] for k in todo])[:, None].astype(np.float32)).to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                new = self.model.encode_for_cache(x).to(self.dtype)
            for j, k in enumerate(todo):
                embs[k] = new[j]
                if self.store:
                    self.store.put(imgs[k], new[j])
        emb = torch.stack([e.to(device=self.device, dtype=self.dtype) for e in embs])
        if self.embeddings is None:
            self.embeddings = torch.empty((len(slices), self.views) + tuple(emb.shape[1:]), dtype=self.dtype,
                                          device=self.device)
        self.embeddings[rows.start:rows.stop, view] = emb

    def batch(self, idx: np.ndarray, rng: np.random.Generator):
        v = rng.integers(0, self.views, size=len(idx))
        emb = self.embeddings[torch.as_tensor(idx), torch.as_tensor(v)].float()
        lab = None
        if self.labels is not None:
            lab = torch.from_numpy(self.labels[idx, v].astype(np.int64)).to(emb.device)
        return emb, lab
