"""Token-aware chunking with langchain-text-splitters against the embedding model's own tokenizer."""

from __future__ import annotations

import copy
import threading

from millrace.config import ConfigError, Settings
from millrace.documents.embed import resolve_model_path
from millrace.documents.records import Chunk, Document, sha256_text
from millrace.documents.xhtml import scrub

_tokenizers: dict[str, object] = {}
_lock = threading.Lock()


def load_tokenizer(settings: Settings):
    path = resolve_model_path(settings)
    with _lock:
        if path not in _tokenizers:
            from transformers import AutoTokenizer

            _tokenizers[path] = AutoTokenizer.from_pretrained(path)
        return _tokenizers[path]


def chunk_id_for(doc_id: str, index: int, content_hash: str) -> str:
    # Deterministic: the same document text always yields the same ids, so re-runs upsert in place.
    return f"{doc_id}-{index:05d}-{content_hash[:12]}"


class Chunker:
    def __init__(self, settings: Settings):
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self.tokenizer = load_tokenizer(settings)
        window = int(getattr(self.tokenizer, "model_max_length", 512) or 512)
        # The splitter counts tokens without [CLS]/[SEP]; leave room for them.
        self.max_tokens = min(settings.chunk_size, window - 2) if window < 100_000 else settings.chunk_size
        if settings.chunk_overlap >= self.max_tokens:
            raise ConfigError(f"chunk overlap {settings.chunk_overlap} must be smaller than chunk size {self.max_tokens}")
        # The Rust tokenizer directly: the same counts as the transformers wrapper (which
        # from_huggingface_tokenizer uses) at a quarter less cost, and the splitter calls it once per sentence.
        self.fast = getattr(self.tokenizer, "backend_tokenizer", None)
        if self.fast is not None:
            # A private copy without the padding/truncation some tokenizer.json files carry (this model pads to 128).
            self.fast = copy.deepcopy(self.fast)
            self.fast.no_padding()
            self.fast.no_truncation()
        self.splitter = RecursiveCharacterTextSplitter(
            length_function=self.count, chunk_size=self.max_tokens, chunk_overlap=settings.chunk_overlap,
            separators=["\n\n", "\n", ". ", "; ", ", ", " ", ""], keep_separator="end", strip_whitespace=True)

    def count(self, text: str) -> int:
        if self.fast is not None:
            return len(self.fast.encode(text, add_special_tokens=False))
        return len(self.tokenizer.tokenize(text))

    def _fit(self, piece: str) -> list[str]:
        """Hard-cut a piece the splitter could not bring under the limit (no separators in it)."""
        if self.fast is not None:
            offsets = self.fast.encode(piece, add_special_tokens=False).offsets
        else:
            offsets = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= self.max_tokens:
            return [piece]
        return [piece[offsets[i][0]: offsets[min(i + self.max_tokens, len(offsets)) - 1][1]]
                for i in range(0, len(offsets), self.max_tokens)]

    def split(self, doc: Document) -> list[Chunk]:
        chunks: list[Chunk] = []
        for page in doc.pages:
            for piece in self.splitter.split_text(scrub(page.text)):
                for text in self._fit(piece):
                    text = text.strip()
                    if not text:
                        continue
                    h = sha256_text(text)
                    i = len(chunks)
                    chunks.append(Chunk(chunk_id=chunk_id_for(doc.doc_id, i, h), doc_id=doc.doc_id, chunk_index=i,
                                        text=text, source_uri=doc.source_uri, title=doc.title, page=page.number,
                                        content_hash=h, metadata={"content_type": doc.content_type,
                                                                  "language": doc.language}))
        return chunks
