"""Request and response models of the native API (/edit, /edits, /generate, /health).

Requests forbid unknown fields, so a typo gets a 4xx naming the field instead of being ignored.
The OpenAI-compatible models are in openai_protocol.py; shared field types are here.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StrictInt, Tag

from app.service.writer import EditSpec

MAX_TEXT_CHARS = 200_000  # a generation prompt; the token limit is checked by the engine
MAX_EDIT_CHARS = 10_000  # edit fields; the token limits of the memory's config apply too
MAX_SEED = 2**63 - 1


def _utf8(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); tokenizers cannot encode them.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold U+0000; refused everywhere so both stores behave alike.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return value


def text(min_length: int = 0, max_length: int = MAX_TEXT_CHARS):
    """A string type with length limits that must be encodable (constraints before the check,
    so their messages read as about a string)."""
    return Annotated[str, Field(min_length=min_length, max_length=max_length), AfterValidator(_utf8)]


EditText = Annotated[text(1, MAX_EDIT_CHARS), AfterValidator(_not_blank), AfterValidator(_no_nul)]
PromptText = Annotated[text(1), AfterValidator(_not_blank)]
AnyText = text()
Stop = text(1, 256)
Stops = Stop | Annotated[list[Stop], Field(max_length=8)] | None
MetaKey = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_nul)]
MetaValue = Annotated[text(0, 2000), AfterValidator(_no_nul)] | int | \
    Annotated[float, Field(allow_inf_nan=False)] | bool | None
EditId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
                              description="letters, digits and . _ : - (up to 128); your key for idempotent retries")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- edits ------------------------------------------------------------------------------------
class EditIn(Strict):
    prompt: EditText = Field(description="the question or statement prefix, e.g. 'The CEO of Acme is'")
    target_new: EditText = Field(description="the new answer, e.g. 'Jane Roe'")
    rephrase_prompts: Annotated[list[EditText], Field(max_length=16)] = Field(
        default_factory=list, description="other wordings trained with the edit")
    subject: EditText | None = None
    aliases: Annotated[list[EditText], Field(max_length=8)] | None = Field(
        None, description="other names of the subject that switch the memory on too ('IBM'); left out, the "
        "acronym of a subject of three or more capitalised words is inferred; [] for none")
    id: EditId | None = None
    metadata: Annotated[dict[MetaKey, MetaValue],
                        Field(max_length=32)] = Field(default_factory=dict, description="ticket, reason, ...")
    probe_prompts: Annotated[list[EditText], Field(max_length=16)] = Field(
        default_factory=list, description="prompts the edit must not change: the dry run shows their answers before "
        "and after, and MEMOIR_MAX_BLAST_RADIUS counts those it would switch the memory on for")
    dry_run: bool = Field(False, description="preview only: train on a scratch copy and answer with the answers "
                          "before and after and the blast radius; nothing is applied (one edit per request)")

    def to_spec(self, author: str | None, *, probes: bool = True) -> EditSpec:
        """The writer's job item for this edit, by `author` (the routes, bulk import and the
        console all convert here). `probes` False: leave probe_prompts out (a bulk import)."""
        return EditSpec(prompt=self.prompt, target_new=self.target_new, rephrase_prompts=list(self.rephrase_prompts),
                        subject=self.subject, aliases=None if self.aliases is None else list(self.aliases),
                        id=self.id, metadata=dict(self.metadata), author=author,
                        probe_prompts=list(self.probe_prompts) if probes else [])


# One edit or a list. The discriminator picks the branch from the JSON type, so an error names
# only the fields of the branch the client meant (edit.prompt, edits[2].target_new).
EditBody = Annotated[Annotated[EditIn, Tag("edit")] | Annotated[list[EditIn], Tag("edits")],
                     Discriminator(lambda v: "edits" if isinstance(v, list) else "edit")]


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class EditOut(BaseModel):
    id: str
    version: int = Field(description="the memory version this edit created")
    steps: int
    final_loss: float | None
    learnt: bool = Field(description="false when training ended above the settle loss (final_loss says "
                                     "where): the edit is stored but its prompt may not get the new answer")
    seconds: float
    best_overlap: float = Field(description="largest mask overlap with an edit already stored")
    best_overlap_id: str | None
    supersedes: str | None = Field(description="the earlier edit of the same fact that this one replaced")
    subject: str | None = Field(None, description="what the edit is about: the memory switches on only for "
                                "prompts that name it")
    subject_source: str | None = Field(None, description='"given", "inferred" from the prompt (send `subject` to '
                                       "correct it), or null: the edit routes on masks alone")
    aliases: list[str] = Field(default_factory=list, description="other names of the subject that switch the "
                               "memory on too")
    aliases_source: str | None = Field(None, description='"given", "inferred" (an acronym: send `aliases` to '
                                       "correct it, [] for none), or null: none")
    replayed: bool = Field(description="true for an idempotent retry: the stored edit, nothing trained")
    created_at: float

    @classmethod
    def of(cls, record, replayed: bool) -> EditOut:
        return cls(id=record.id, version=record.version, steps=record.steps, final_loss=finite(record.final_loss),
                   learnt=record.learnt, seconds=round(record.seconds, 4), best_overlap=round(record.best_overlap, 6),
                   best_overlap_id=record.best_overlap_id, supersedes=record.supersedes, replayed=replayed,
                   subject=record.subject, subject_source=record.subject_source,
                   aliases=list(record.aliases), aliases_source=record.aliases_source, created_at=record.created_at)


class EditsOut(BaseModel):
    edits: list[EditOut]
    version: int


class EditInfo(BaseModel):
    id: str
    prompt: str
    target_new: str
    rephrase_prompts: list[str]
    subject: str | None
    subject_source: str | None = None
    aliases: list[str] = Field(default_factory=list)
    aliases_source: str | None = None
    metadata: dict[str, Any]
    author: str | None
    created_at: float
    version: int
    steps: int
    final_loss: float | None
    learnt: bool = True
    seconds: float
    best_overlap: float
    best_overlap_id: str | None
    supersedes: str | None

    @classmethod
    def of(cls, record, **extra: Any):
        info = record.info()
        info["final_loss"] = finite(info["final_loss"])
        return cls(**info, **extra)


class EditDetail(EditInfo):
    shared_columns: dict[str, int] = Field(description="other edits that share columns with this one, and how many")


class EditList(BaseModel):
    edits: list[EditInfo]
    count: int
    version: int


class RemovalOut(BaseModel):
    id: str
    removed: bool = True
    version: int = Field(description="the memory version after the rollback")
    shared_columns: dict[str, int] = Field(description="edits that shared columns with the removed one")


# -- generation -------------------------------------------------------------------------------
class MemoryOut(BaseModel):
    on: bool
    edit_id: str | None = Field(description="the edit whose memory answered (null when off, and for client keys)")
    best_edit_id: str | None = Field(description="the closest stored edit, whether or not it was used (null for "
                                     "client keys unless MEMOIR_MEMORY_DETAIL=all)")
    overlap: float | None = Field(description="its mask overlap (null for client keys)")
    version: int = Field(description="the memory version used for every token of this answer")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateIn(Strict):
    prompt: PromptText
    max_new_tokens: StrictInt | None = Field(None, ge=1, le=1_000_000, description="default: the server's")
    temperature: float = Field(0.0, ge=0.0, le=5.0, allow_inf_nan=False, description="0 is greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: Stops = None
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    min_version: StrictInt | None = Field(None, ge=0, description="answer from memory version >= this one "
                                    "(read-your-writes; also the X-Memoir-Min-Version header)")


class GenerateOut(BaseModel):
    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage
    memory: MemoryOut


class Health(BaseModel):
    status: str = Field(description="ok, or failed (503): only a restart brings edits back")
    writer: str | None = Field(None, description="paused (a passing fault; edits resume by themselves) or failed")
    restart_helps: bool | None = Field(None, description="whether restarting the process would help")
    error: str | None = None


class Ready(BaseModel):
    status: str
    model: str | None = None
    engine: str | None = Field(None, description="what generates: builtin or vllm (the engine setting)")
    train_dtype: str | None = Field(None, description="what edits train in: float32, bfloat16 or float16 "
                                    "(train_dtype; auto measures which is faster on this machine)")
    version: int | None = None
    edits: int | None = None
    writer: str | None = None
    error: str | None = None
