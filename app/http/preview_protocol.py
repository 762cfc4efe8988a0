"""Response models of the edit preview (POST /edit with dry_run) and of "try a prompt"."""

from __future__ import annotations

from pydantic import BaseModel, Field

from memoir_core.preview import Preview, Tried

from .protocol import finite


class AnswerOut(BaseModel):
    prompt: str
    kind: str = Field(description="prompt or paraphrase")
    before: str = Field(description="greedy answer with the memory as it is")
    after: str = Field(description="greedy answer with the edit applied")
    fired: bool = Field(description="the memory is on with this edit after it is applied")
    overlap: float = Field(description="overlap of this prompt's mask with the edit's masks")


class ProbeOut(BaseModel):
    text: str
    overlap: float
    before: str
    after: str
    changed: bool


class NeighbourOut(BaseModel):
    kind: str = Field(description='"other subject" (the prompt about a sibling), "same subject" (another question '
                      'about it) or "given" (probe_prompts)')
    text: str
    fired: bool = Field(description="the memory would be on with this edit")
    edit_id: str | None = Field(description="the edit the memory would be on with after this one (null: off)")
    overlap: float
    before: str
    after: str
    changed: bool
    counted: bool = Field(description="counts against the blast radius (a sibling or given prompt it switches on)")


class BlastRadiusOut(BaseModel):
    count: int = Field(description="background texts and neighbour prompts the edit would switch the memory on for")
    total: int = Field(description="background texts probed")
    limit: int | None = Field(description="MEMOIR_MAX_BLAST_RADIUS: a committed edit over it is refused (422)")
    over_limit: bool
    probes: list[ProbeOut] = Field(description="the texts caught (up to 20), with their answers before and after")
    neighbours: list[NeighbourOut] = Field(default_factory=list, description="prompts near the edit: its prompt "
                                           "about other subjects, other questions about its subject, probe_prompts")


class PreviewOut(BaseModel):
    dry_run: bool = True
    prompt: str
    target_new: str
    steps: int
    final_loss: float | None
    seconds: float
    best_overlap: float = Field(description="largest mask overlap with an edit already stored")
    best_overlap_id: str | None
    supersedes: str | None = Field(description="the stored edit of the same fact this one would replace")
    subject: str | None = Field(None, description="what the edit is about (the memory switches on only for "
                                "prompts that name it)")
    subject_source: str | None = Field(None, description='"given" or "inferred" (send `subject` to correct it)')
    aliases: list[str] = Field(default_factory=list, description="other names of the subject that switch the memory "
                               "on too")
    aliases_source: str | None = Field(None, description='"given" or "inferred" (send `aliases` to correct them)')
    answers: list[AnswerOut]
    blast_radius: BlastRadiusOut
    version: int = Field(description="the memory version, unchanged by the dry run")

    @classmethod
    def of(cls, preview: Preview, limit: int | None) -> PreviewOut:
        rec = preview.proposal.record
        blast = preview.blast
        shown = [p for p in blast.probes if p.before or p.after]
        return cls(
            prompt=rec.prompt, target_new=rec.target_new, steps=rec.steps, final_loss=finite(rec.final_loss),
            seconds=round(rec.seconds, 4), best_overlap=round(rec.best_overlap, 6),
            best_overlap_id=rec.best_overlap_id, supersedes=rec.supersedes,
            subject=rec.subject, subject_source=rec.subject_source, aliases=list(rec.aliases),
            aliases_source=rec.aliases_source,
            answers=[AnswerOut(**vars(a)) for a in preview.answers],
            blast_radius=BlastRadiusOut(
                count=blast.count, total=blast.total, limit=limit, over_limit=limit is not None and blast.count > limit,
                probes=[ProbeOut(text=p.text, overlap=p.overlap, before=p.before, after=p.after, changed=p.changed)
                        for p in shown],
                neighbours=[NeighbourOut(**vars(n), changed=n.changed, counted=n.counted) for n in blast.neighbours]),
            version=preview.version)


class TryOut(BaseModel):
    prompt: str
    with_memory: str
    without_memory: str
    edit_id: str | None = Field(description="the edit that fired (null: memory off)")
    best_edit_id: str | None
    overlap: float
    tau: float
    version: int

    @classmethod
    def of(cls, tried: Tried) -> TryOut:
        return cls(**vars(tried))
