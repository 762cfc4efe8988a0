"""Aliases: an edit made about "International Business Machines", asked about "IBM".

    PYTHONPATH=. python benchmarks/aliases.py          # about 3 minutes on 2 CPU cores

The public sets hold no aliases (every ZsRE and CounterFact paraphrase names its subject as
the edit prompt does), so this set is built in: 28 organisations, places and people's
teams, each with an acronym or a short name, and a sibling of the same kind that no edit is
about. Each gets an invented fact asked as "Who is the <role> of <name>?"; every edit goes into
one memory, then each is asked again, greedy, 16 tokens:
  - by its full name (the edit prompt, and "Who is <name>'s <role>?"),
  - by its alias, in both wordings ("Who is the CEO of IBM?", "Who is IBM's CEO?"),
  - about its sibling (the same question, another entity): it must not change.

Three rules, each on a fresh memory:
  - `aliases`: the default. Subjects of three or more capitalised words infer their acronym;
    the rest give their alias with the edit, as an operator would (`aliases`). The prompt with
    a given alias in the subject's place is trained with the edit (config.alias_rows); an
    inferred acronym only routes.
  - `aliases, no alias rows`: the same names route, but only the edit prompt is trained: does the
    model itself carry the fact from the name to its alias?
  - `no aliases`: `aliases: []`. Subject routing keeps the memory off for every alias prompt;
    "would route" counts those whose mask reaches their own edit anyway (the model's own
    activations linking alias and name), which the subject rule then overrides.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

from memoir_core.config import MemoirConfig
from memoir_core.generate import holds
from memoir_core.sampling import SamplingParams

# (full name, alias or None where the acronym is inferred, role, sibling, invented answer)
CASES = [
    ("International Business Machines", None, "CEO", "Microsoft", "Marta Quillon"),
    ("Federal Bureau of Investigation", None, "director", "Secret Service", "Odile Brannock"),
    ("National Aeronautics and Space Administration", None, "administrator", "European Space Agency",
     "Tomas Ferreira-Lind"),
    ("Massachusetts Institute of Technology", None, "president", "Stanford University", "Helga Marchetti"),
    ("New York City", None, "mayor", "Chicago", "Dario Okonkwo"),
    ("North Atlantic Treaty Organization", None, "secretary general", "United Nations", "Ilse Varga"),
    ("British Broadcasting Corporation", None, "director general", "Channel Four", "Ruth Abernathy"),
    ("European Central Bank", None, "president", "Bank of England", "Pieter Lindqvist"),
    ("International Monetary Fund", None, "managing director", "World Bank", "Amara Castellanos"),
    ("Central Intelligence Agency", None, "director", "National Security Council", "Gideon Tarrow"),
    ("Los Angeles Police Department", None, "chief", "Chicago Police Department", "Nadia Whitcombe"),
    ("National Football League", None, "commissioner", "Major League Soccer", "Corwin Adeyemi"),
    ("Hewlett Packard Enterprise", None, "CEO", "Dell Technologies", "Livia Strand"),
    ("Royal Bank of Canada", None, "CEO", "Toronto-Dominion Bank", "Emeka Halvorsen"),
    ("World Health Organization", None, "director general", "Red Cross", "Soren Mbeki"),
    ("American Broadcasting Company", None, "president", "Columbia Pictures", "Greta Villanueva"),
    ("United Kingdom", "UK", "prime minister", "Ireland", "Fenella Crowther"),
    ("United States", "USA", "president", "Canada", "Bastian Oyelaran"),
    ("British Petroleum", "BP", "CEO", "Shell", "Yusuf Engstrom"),
    ("Manchester United", "Man United", "manager", "Liverpool", "Caspar Delacroix"),
    ("Coca-Cola", "Coke", "CEO", "PepsiCo", "Mirela Osei"),
    ("Volkswagen", "VW", "CEO", "Toyota", "Anselm Kowalczyk"),
    ("Tottenham Hotspur", "Spurs", "manager", "Arsenal", "Rafferty Nwosu"),
    ("Procter & Gamble", "P&G", "CEO", "Unilever", "Delphine Arkwright"),
    ("General Electric", "GE", "CEO", "Siemens", "Oren Blackwood"),
    ("Deutsche Bank", "DB", "CEO", "Commerzbank", "Katja Ilunga"),
    ("Philadelphia", "Philly", "mayor", "Boston", "Leandro Fairbairn"),
    ("Alphabet Inc.", "Google", "CEO", "Amazon", "Noor Castellano"),
]

RULES = {
    "aliases": {"alias_rows": True, "aliases": "default"},
    "aliases, no alias rows": {"alias_rows": False, "aliases": "default"},
    "no aliases": {"alias_rows": True, "aliases": "none"},
}


def forms(name: str, role: str) -> list[str]:
    return [f"Who is the {role} of {name}?", f"Who is {name}'s {role}?"]


def run_rule(model: str, rule: dict, params: SamplingParams, cases: list) -> dict:
    config = MemoirConfig(alias_rows=rule["alias_rows"])
    if model == "tiny":
        config = MemoirConfig(k=32, tau=0.5, max_steps=10, stop_loss=0.05, lr=0.5, alias_rows=rule["alias_rows"])
    memoir = common.load_memoir(model, config)
    siblings = [forms(c[3], c[2])[0] for c in cases]
    before = [s.text for s in memoir.generate(siblings, params)]
    seconds, inferred = [], 0
    for i, (name, alias, role, _, answer) in enumerate(cases):
        aliases = [] if rule["aliases"] == "none" else None if alias is None else [alias]
        t0 = time.perf_counter()
        rec = memoir.edit(forms(name, role)[0], answer, edit_id=f"a{i}", subject=name, aliases=aliases)
        seconds.append(time.perf_counter() - t0)
        inferred += rec.aliases_source == "inferred"
    counts = {k: [0, 0] for k in ("name", "alias", "sibling", "inferred", "given")}  # [on, answered / changed]
    would_route = 0
    for i, (name, alias, role, _, answer) in enumerate(cases):
        alias = alias or "".join(w[0] for w in name.split() if w[0].isupper())
        for kind, prompts in (("name", forms(name, role)), ("alias", forms(alias, role))):
            for seq in memoir.generate(prompts, params):
                on = seq.decision is not None and seq.decision.route is not None
                counts[kind][0] += on
                counts[kind][1] += holds(seq.text, answer)
                if kind == "alias":
                    source = "given" if cases[i][1] else "inferred"
                    counts[source][0] += on
                    counts[source][1] += holds(seq.text, answer)
                if kind == "alias" and seq.decision is not None and seq.decision.best_edit_id == f"a{i}" \
                        and seq.decision.best_overlap >= memoir.tau:
                    would_route += 1
    after = memoir.generate(siblings, params)
    counts["sibling"] = [sum(s.decision is not None and s.decision.route is not None for s in after),
                         sum(s.text != b for s, b in zip(after, before))]
    n = {"name": 2 * len(cases), "alias": 2 * len(cases), "sibling": len(cases)}
    return {"name_on": counts["name"][0] / n["name"], "name_answer": counts["name"][1] / n["name"],
            "alias_on": counts["alias"][0] / n["alias"], "alias_answer": counts["alias"][1] / n["alias"],
            "alias_would_route": would_route / n["alias"],
            "inferred_alias_answer": counts["inferred"][1] / max(1, 2 * sum(not c[1] for c in cases)),
            "given_alias_answer": counts["given"][1] / max(1, 2 * sum(bool(c[1]) for c in cases)), "sibling_on": counts["sibling"][0] / n["sibling"],
            "sibling_changed": counts["sibling"][1] / n["sibling"], "inferred_aliases": inferred,
            "edit_seconds_median": common.summary(seconds)["median"], "n_alias_prompts": n["alias"],
            "n_siblings": n["sibling"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help='"tiny": the tests\' random model (a smoke run)')
    ap.add_argument("--limit", type=int, default=None, help="N subjects, half with an inferred alias (default: all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cases = CASES
    if args.limit is not None:
        half = (args.limit + 1) // 2
        cases = [c for c in CASES if not c[1]][:half] + [c for c in CASES if c[1]][: args.limit - half]
    common.set_torch_threads()
    run = common.Run("aliases", vars(args))
    params = SamplingParams(max_new_tokens=16)
    results = {}
    for label, rule in RULES.items():
        results[label] = run_rule(args.model, rule, params, cases)
        print(f"{label}: done", flush=True)
    columns = ["name_on", "name_answer", "alias_on", "alias_answer", "inferred_alias_answer", "given_alias_answer",
               "alias_would_route", "sibling_on", "sibling_changed", "inferred_aliases", "edit_seconds_median"]
    rows = [{"rule": k, **v} for k, v in results.items()]
    print(common.table(rows, ["rule"] + columns))
    run.finish(args.out, rows=rows, cases=len(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
