"""The byte-level BPE tokenizer: trained offline with Hugging Face `tokenizers`, stored in the HF layout.

A saved directory holds `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`, so
`transformers.AutoTokenizer.from_pretrained(dir)` loads it, and `Tokenizer.load` reads the directories
of other models (SmolLM2, Llama 3, ...) as well. `transformers` itself is never imported here: serving and
data preparation need only the Rust tokenizer and jinja2.

Special tokens are never added implicitly: `encode` adds BOS/EOS only when asked, and ignores whatever
post-processor a foreign `tokenizer.json` carries (Llama 3's adds BOS), so every caller sees the same ids
for the same text whichever tokenizer it loaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from jijian.config.errors import UserInputError

SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1], SPECIAL_TOKENS[2]

CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
# transformers >= 4.43 writes the template to its own file, which then wins over the config entry.
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# transformers stores "no limit" as int(1e30); anything this large means the same.
_NO_LIMIT = 10**18


class TokenizerError(UserInputError):
    """A tokenizer file or directory is unreadable or inconsistent."""


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens and chat template a model was trained with."""

    def __init__(
        self,
        backend: Backend,
        *,
        bos_token: str | None,
        eos_token: str | None,
        pad_token: str | None,
        chat_template: str | None = None,
        model_max_length: int | None = None,
    ) -> None:
        if backend.truncation is not None or backend.padding is not None:
            # A tokenizer.json may switch these on; silent truncation or padding would corrupt data shards.
            backend = Backend.from_str(backend.to_str())
            backend.no_truncation()
            backend.no_padding()
        for role, token in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
            if token is not None and backend.token_to_id(token) is None:
                raise ValueError(f"{role} {token!r} is not in the tokenizer's vocabulary")
        if model_max_length is not None and model_max_length <= 0:
            raise ValueError(f"model_max_length must be positive, got {model_max_length}")
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self._text_backend: Backend | None = None  # a copy that reads special-token strings as plain text

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
            f"pad={self.pad_token!r})"
        )

    @classmethod
    def load(cls, path: str | Path, *, read_bytes: Callable[[Path], bytes] | None = None) -> Tokenizer:
        """Load a tokenizer.json file, or an HF tokenizer directory holding one plus its config files.

        `read_bytes` reads the files instead of the file system (e.g. decrypting them in memory).
        """
        path = Path(path)
        read = read_bytes or Path.read_bytes
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {path}: the path does not exist")
        if path.is_dir():
            directory: Path | None = path
            file = path / TOKENIZER_FILE
            if not file.is_file():
                hint = ""
                if (path / "tokenizer.model").is_file():
                    hint = " (only a sentencepiece tokenizer.model: convert it with transformers)"
                raise FileNotFoundError(f"no {TOKENIZER_FILE} in tokenizer directory {path}{hint}")
        else:
            file = path
            # Only a file named like the HF layout takes its siblings' configs; any other file stands alone.
            directory = path.parent if path.name == TOKENIZER_FILE else None

        raw = read(file) if read_bytes is not None else None
        try:
            backend = Backend.from_file(str(file)) if raw is None else Backend.from_str(raw.decode("utf-8"))
        except Exception as e:
            raise TokenizerError(f"cannot read tokenizer file {file}: {e}") from e

        config: dict[str, Any] = {}
        special_map: dict[str, Any] = {}
        chat_template: str | None = None
        if directory is not None:
            special_map = _read_json(directory / SPECIAL_TOKENS_MAP_FILE, read)
            config = _read_json(directory / CONFIG_FILE, read)
            chat_template = _chat_template_from_config(config.get("chat_template"), directory / CONFIG_FILE)
            template_file = directory / CHAT_TEMPLATE_FILE
            if template_file.is_file():
                chat_template = read(template_file).decode("utf-8")
        if not config and not special_map:
            # A tokenizer.json without configs (ours, copied alone): the standard special tokens, if present.
            vocab = backend.get_vocab(with_added_tokens=True)
            special_map = {
                key: token
                for key, token in (
                    ("bos_token", BOS_TOKEN),
                    ("eos_token", EOS_TOKEN),
                    ("pad_token", PAD_TOKEN),
                )
                if token in vocab
            }
        # tokenizer_config.json wins over special_tokens_map.json, as in transformers.
        config = {**special_map, **config}

        max_len = config.get("model_max_length")
        if not isinstance(max_len, int) or isinstance(max_len, bool) or not 0 < max_len < _NO_LIMIT:
            max_len = None
        try:
            return cls(
                backend,
                bos_token=_token_content(config.get("bos_token")),
                eos_token=_token_content(config.get("eos_token")),
                pad_token=_token_content(config.get("pad_token")),
                chat_template=chat_template,
                model_max_length=max_len,
            )
        except ValueError as e:
            raise TokenizerError(f"invalid tokenizer at {path}: {e}") from e

    def save(self, directory: str | Path, *, write_bytes: Callable[[Path, bytes], None] | None = None) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`.

        `write_bytes` writes the files instead of the file system (e.g. encrypting them in memory).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if write_bytes is None:
            self.backend.save(str(directory / TOKENIZER_FILE), pretty=True)
        else:
            write_bytes(directory / TOKENIZER_FILE, self.backend.to_str(pretty=True).encode("utf-8"))
        special = {
            key: value
            for key, value in (
                ("bos_token", self.bos_token),
                ("eos_token", self.eos_token),
                ("pad_token", self.pad_token),
            )
            if value is not None
        }
        # No add_bos_token/add_eos_token: transformers v5 drops them when tokenizer.json is present and v4's
        # PreTrainedTokenizerFast ignores them, so the post-processor in tokenizer.json alone decides.
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            # transformers would otherwise "clean up" spaces before punctuation and break the round trip.
            "clean_up_tokenization_spaces": False,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        _write_json(directory / CONFIG_FILE, config, write_bytes)
        _write_json(directory / SPECIAL_TOKENS_MAP_FILE, special, write_bytes)
        # A stale chat_template.jinja from an earlier save would override the config entry on load.
        (directory / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included: the embedding table needs at least this many rows."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-text token, or None if the tokenizer has none."""
        return None if self.bos_token is None else self.backend.token_to_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-text token, or None if the tokenizer has none."""
        return None if self.eos_token is None else self.backend.token_to_id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token, or None if the tokenizer has none."""
        return None if self.pad_token is None else self.backend.token_to_id(self.pad_token)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, with BOS/EOS only where asked for."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, add_bos, add_eos)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of untrusted text: a special-token string in it (`<|im_start|>`...) encodes as plain text."""
        if self._text_backend is None:
            # A separate copy: flipping the flag on the shared backend would race with other threads.
            backend = Backend.from_str(self.backend.to_str())
            backend.encode_special_tokens = True
            self._text_backend = backend
        return self._text_backend.encode(text, add_special_tokens=False).ids

    def encode_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """The chat template's token ids, where only the template can produce control tokens.

        Each message's content is rendered as a unique placeholder; the template text between the
        placeholders is encoded with special tokens recognised, each content with them read as text.
        """
        marker = "\x00jijian-content-" + secrets.token_hex(8) + "-{}\x00"
        slots = [{**m, "content": marker.format(i)} for i, m in enumerate(messages)]
        rendered = self.apply_chat_template(slots, add_generation_prompt=add_generation_prompt)
        pieces = rendered.split("\x00")
        # Expected: template, slot, template, slot, ..., template, each slot once and in order.
        slot_pieces = pieces[1::2]
        expected = [marker.format(i).strip("\x00") for i in range(len(messages))]
        if slot_pieces != [e for e in expected if e in slot_pieces] or len(set(slot_pieces)) != len(slot_pieces):
            raise ValueError("the chat template changes or reorders message contents; cannot encode them safely")
        contents = {marker.format(i).strip("\x00"): m["content"] for i, m in enumerate(messages)}
        ids: list[int] = []
        for index, piece in enumerate(pieces):
            if index % 2:
                ids += self.encode_text(contents[piece])
            elif piece:
                ids += self.encode(piece)
        return ids

    def encode_batch(self, texts: list[str], *, add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by the Rust batch encoder."""
        # encode_batch_fast (tokenizers >= 0.21) skips offset tracking, which jijian never reads.
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        encodings = encode(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, add_bos, add_eos) for e in encodings]

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True but this tokenizer has no bos_token")
            ids = [self.bos_id, *ids]
        if add_eos:
            if self.eos_id is None:
                raise ValueError("add_eos=True but this tokenizer has no eos_token")
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """The text of `ids`; special tokens are left out unless skip_special_tokens is False."""
        ids = [int(i) for i in ids]  # numpy/torch integers and tensors are not accepted by the Rust side
        n = self.vocab_size
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            # The Rust decoder silently drops unknown ids, which would hide a model/tokenizer mismatch.
            raise ValueError(f"token ids out of range for vocab_size {n}: {bad[:10]}")
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """Render a conversation with the chat template, exactly as transformers' apply_chat_template does."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat_template")
        template = _compile_template(self.chat_template)
        # Same variables as transformers: its special-tokens map, plus tools/documents (None when unused),
        # so that templates testing `tools is not none` render identically.
        return template.render(
            messages=[dict(m) for m in messages],
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            pad_token=self.pad_token,
        )

    def fingerprint(self) -> str:
        """sha256 of the canonical tokenizer.json, which data shards record to name their tokenizer."""
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    model_max_length: int | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `texts`; special tokens get ids 0..len(SPECIAL_TOKENS)-1."""
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be at least {minimum} (256 byte tokens + {len(SPECIAL_TOKENS)} special "
            f"tokens), got {vocab_size}"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    # Keeps offsets right and adds no tokens: BOS/EOS are jijian's to add explicitly.
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        # Every byte is in the vocabulary even if the corpus lacks it, so any string can be encoded.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(
        backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
    )


def _token_content(value: Any) -> str | None:
    # HF configs hold special tokens either as strings or as serialized AddedToken dicts.
    if value is None or isinstance(value, str):
        return value
    content = value.get("content") if isinstance(value, dict) else None
    if isinstance(content, str):
        return content
    raise ValueError(f"cannot read special token {value!r}")


def _chat_template_from_config(value: Any, source: Path) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        # Multiple named templates; "default" is the one transformers uses without a name or tools.
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        return named.get("default")
    raise TokenizerError(
        f"cannot read chat_template in {source}: expected a string or a list, got {type(value).__name__}"
    )


def _read_json(path: Path, read: Callable[[Path], bytes] = Path.read_bytes) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:  # a decryption error is not caught here: it names the file and the cause itself
        data = json.loads(read(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise TokenizerError(f"cannot read {path}: expected a JSON object, got {type(data).__name__}")
    return data


def _write_json(path: Path, data: dict[str, Any], write_bytes: Callable[[Path, bytes], None] | None = None) -> None:
    (write_bytes or Path.write_bytes)(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # jinja's own tojson escapes HTML characters, which chat templates must not do.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    # Templates come from downloaded model directories, so they are untrusted code: sandbox them.
    # The environment mirrors transformers' so that foreign templates render byte for byte the same.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)
