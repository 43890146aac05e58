"""`suggest`: Optuna over the workspace's `search_space`, learning from every experiment.

- The study lives next to the experiments, in `.autoresearch/optuna.db` (Optuna's own schema;
  `optuna-dashboard sqlite:///.autoresearch/optuna.db` shows it). Its name carries a hash of the
  parameter kinds, so changing a kind or a categorical's choices starts a fresh study; new bounds don't.
- Every experiment that is not a rerun is a trial, with the values it really ran with: the
  snapshot's constants overridden by its `params` (values outside the space are left out).
  Agent-proposed runs still in flight are `enqueue_trial`-ed and asked at once (a RUNNING trial the
  sampler's constant liar sees); finished ones are added with `add_trial`.
- `suggest(n)` asks n trials (pending until a run with those params appears, matched with a
  relative tolerance of 1e-3 so rounded copies still match); a newer `suggest` abandons pending
  suggestions that were never run (told FAIL). Every finished run is told: succeeded -> its
  objective, failed / timeout / cancelled / interrupted -> FAIL, so no trial stays RUNNING.
- TPE by default (`hpo_sampler` in autoresearch.toml); `random`; `gp` needs torch, so it runs in a
  child process (`python -m tools.hpo suggest WORKSPACE N`), never in the MCP server.
Only this module touches Optuna; runs.record calls `after_run` (in the supervisor).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import math
import subprocess
import sys
from contextlib import contextmanager

from pydantic import BaseModel, Field

from tools.errors import ToolError
from tools.lab import Lab
from tools.provenance import snapshot_constants
from tools.store import TERMINAL, Store

DB_NAME = "optuna.db"
MAX_SUGGEST = 8
MATCH_RTOL = 1e-3
N_STARTUP_TRIALS = 8


class Suggestion(BaseModel):
    trial: int = Field(description="the Optuna trial number")
    params: dict[str, float | int | str | bool]
    run: str = Field(description="the call that runs it")


class SuggestResult(BaseModel):
    study: str
    storage: str = Field(description="open it with optuna-dashboard")
    sampler: str
    trials_complete: int
    trials_failed: int
    trials_running: int
    best: dict | None = Field(None, description="the best told trial: value, params, experiment_id")
    suggestions: list[Suggestion]
    abandoned: list[int] = Field(default_factory=list, description="earlier suggestions never run (told FAIL)")
    next: str


# -- Optuna plumbing (imported lazily: the server starts without it) -----------------------------
def _optuna():
    try:
        import optuna
    except ImportError:
        raise ToolError("suggest needs Optuna, which is not installed. Fix: pip install 'eclip-autoresearch[hpo]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(space: dict) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    out = {}
    for name, p in space.items():
        if p.type == "float":
            out[name] = FloatDistribution(p.low, p.high, log=p.log)
        elif p.type == "int":
            out[name] = IntDistribution(int(p.low), int(p.high), log=p.log)
        else:
            out[name] = CategoricalDistribution(list(p.choices))
    return out


def make_sampler(kind: str, seed: int | None = None):
    optuna = _optuna()
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=N_STARTUP_TRIALS)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=N_STARTUP_TRIALS)
    raise ToolError(f"hpo_sampler={kind!r} is unknown. Fix: use tpe, random or gp in autoresearch.toml.")


def study_name(lab: Lab) -> str:
    kinds = sorted((n, p.type, json.dumps(p.choices) if p.type == "categorical" else "")
                   for n, p in lab.config.search_space.items())
    return "autoresearch-" + hashlib.sha256(json.dumps(kinds).encode()).hexdigest()[:8]


def storage_url(lab: Lab) -> str:
    return f"sqlite:///{lab.state_dir / DB_NAME}"


@contextmanager
def _locked(lab: Lab):
    """One process at a time touches the study (the server, supervisors, a GP child)."""
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    with open(lab.state_dir / "optuna.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_STUDIES: dict[tuple[str, str], object] = {}  # per process: Optuna's cached storage keeps finished trials


def open_study(lab: Lab, sampler=None):
    """The workspace's study, opened once per process: a later call reads only the trials added since
    (Optuna's _CachedStorage), so a suggest at 10k trials does not reload them all. WAL, and no fsync per
    commit: Optuna writes each trial in its own transaction (the study is derived from the store)."""
    optuna = _optuna()
    key = (storage_url(lab), study_name(lab))
    study = _STUDIES.get(key)
    if study is None:
        from sqlalchemy import event
        storage = optuna.storages.RDBStorage(key[0], engine_kwargs={"connect_args": {"timeout": 60}})
        event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # connections made before the listener get the pragmas too
        study = optuna.create_study(study_name=key[1], storage=storage, load_if_exists=True,
                                    direction=lab.config.direction)
        _STUDIES[key] = study
    if study.direction.name.lower() != lab.config.direction:
        raise ToolError(f"the Optuna study {study.study_name} was made for direction={study.direction.name.lower()}, "
                        f"autoresearch.toml says {lab.config.direction}. Fix: move {lab.state_dir / DB_NAME} away.")
    if sampler is not None:
        study.sampler = sampler
    return study


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


# -- experiments -> trials ---------------------------------------------------------------------
def in_space(values: dict, dists: dict) -> dict:
    """The values that fit the search space, typed as the space says."""
    from optuna.distributions import CategoricalDistribution, IntDistribution
    out = {}
    for name, d in dists.items():
        if name not in values:
            continue
        v = values[name]
        if isinstance(d, CategoricalDistribution):
            hit = [c for c in d.choices if v == c and (type(v) is type(c) or (_isnum(v) and _isnum(c)))]
            if hit:
                out[name] = hit[0]
            continue
        if not _isnum(v) or not d.low <= v <= d.high:
            continue
        if isinstance(d, IntDistribution):
            if float(v).is_integer():
                out[name] = int(v)
        else:
            out[name] = float(v)
    return out


def params_match(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for k, va in a.items():
        vb = b[k]
        if _isnum(va) and _isnum(vb):
            if not math.isclose(va, vb, rel_tol=MATCH_RTOL, abs_tol=1e-12):
                return False
        elif va != vb:
            return False
    return True


def run_values(lab: Lab, exp: dict, dists: dict) -> dict:
    """The search-space values a run ran with: its snapshot's constants, as recorded at submit
    (provenance); read from git only for a row without them."""
    prov = json.loads(exp["config_json"] or "{}").get("provenance")
    consts = prov.get("constants") if isinstance(prov, dict) and prov.get("commit") == exp["snapshot_commit"] else None
    if not isinstance(consts, dict):
        consts = snapshot_constants(lab, exp["snapshot_commit"])
    return in_space(consts, dists)


def sync(lab: Lab, study, dists: dict, store=None) -> None:
    """Bring the study up to date with the experiments table (idempotent, incremental: only runs
    above the study's last linked experiment are looked at; finished ones are added in one batch)."""
    optuna = _optuna()
    store, name = store or lab.store, study.study_name
    S = optuna.trial.TrialState
    for _ in range(1000):  # experiments_without_trial pages by 1000; a backfill takes a few pages
        new = store.experiments_without_trial(name)
        if not new:
            break
        pending = store.trials_in_state(name, "pending")
        batch: list[tuple] = []  # finished runs, added together (the order of ids is kept: flushed first)

        def flush():
            if not batch:
                return
            study.add_trials([t for t, _ in batch])
            numbers = [t.number for t in study.get_trials(deepcopy=False)[-len(batch):]]
            store.insert_trials([(name, n, row[0], "agent", row[1], row[2], True) for n, (_, row) in zip(numbers, batch)])
            batch.clear()

        for exp in new:
            # the snapshot is the code that ran: its constants hold the run's params
            values = run_values(lab, exp, dists)
            terminal = exp["status"] in TERMINAL
            match = next((p for p in pending if p["created_at"] <= exp["created_at"]
                          and params_match(json.loads(p["params_json"]), values)), None) if values else None
            if values and terminal and match is None:  # a truncated (incomparable) run is no success to learn from
                ok = exp["status"] == "succeeded" and exp["objective"] is not None and exp["verdict"] != "incomparable"
                attrs = {"experiment_id": exp["id"], "source": "agent", "description": exp["description"][:200]}
                batch.append((optuna.trial.create_trial(
                    params=values, distributions={k: dists[k] for k in values}, user_attrs=attrs,
                    value=exp["objective"] if ok else None, state=S.COMPLETE if ok else S.FAIL),
                    (exp["id"], values, "complete" if ok else "fail")))
                continue
            flush()
            if not values:
                store.insert_trial(name, None, exp["id"], "agent", {}, "skipped")
            elif match is not None:
                pending.remove(match)
                store.link_trial(match["id"], exp["id"])
                _set_attr(study, match["trial_number"], exp["id"])
            else:  # in flight: enqueue, and ask at once so it is RUNNING (the lock keeps this pair atomic)
                attrs = {"experiment_id": exp["id"], "source": "agent", "description": exp["description"][:200]}
                study.enqueue_trial(values, user_attrs=attrs)
                trial = study.ask({k: dists[k] for k in values})
                store.insert_trial(name, trial.number, exp["id"], "agent", values, "running")
        flush()
    for r in store.running_trials_of_finished_runs(name):
        ok = r["status"] == "succeeded" and r["objective"] is not None
        _tell(study, r["trial_number"], r["objective"] if ok else None)
        store.set_trial_state(r["id"], "complete" if ok else "fail")


def _tell(study, number: int, value: float | None) -> None:
    optuna = _optuna()
    try:
        if value is None:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(number, value)
    except (ValueError, RuntimeError) as exc:  # already finished (a crash between tell and our update)
        if "finished" not in str(exc).lower() and "already" not in str(exc).lower():
            raise


def _set_attr(study, number: int, experiment_id: int) -> None:
    """Show the experiment id in optuna-dashboard (cosmetic: the link of record is hpo_trials)."""
    try:
        import optuna
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        optuna.trial.Trial(study, trial_id).set_user_attr("experiment_id", experiment_id)
    except Exception:  # noqa: BLE001 - private API; never worth failing a sync
        pass


# -- the tool ----------------------------------------------------------------------------------
def suggest(lab: Lab, n: int = 1, *, in_child: bool = False) -> SuggestResult:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SUGGEST:
        raise ToolError(f"invalid n={n!r}. Fix: ask for 1 to {MAX_SUGGEST} suggestions.")
    cfg = lab.config
    if not cfg.search_space:
        raise ToolError("search_space is empty in autoresearch.toml, so there is nothing to suggest. Fix: a human adds "
                        "e.g. [search_space.LR] type = \"float\", low = 1e-4, high = 1e-2, log = true.")
    if cfg.hpo_sampler == "gp" and not in_child:
        return _suggest_in_child(lab, n)
    optuna = _optuna()
    dists = distributions(cfg.search_space)
    # its own connection: suggest needs nothing of the caller's (the server may run it without its lock)
    store = Store(lab.store.path)
    try:
        with _locked(lab):
            return _suggest(lab, store, optuna, dists, n)
    finally:
        store.close()


def _suggest(lab: Lab, store: Store, optuna, dists: dict, n: int) -> SuggestResult:
    cfg = lab.config
    study = open_study(lab, make_sampler(cfg.hpo_sampler))
    try:
        sync(lab, study, dists, store)
    except ValueError as exc:
        raise ToolError(f"the study does not accept this workspace's history ({exc}). Fix: check search_space.") from None
    abandoned = []
    for p in store.trials_in_state(study.study_name, "pending"):
        _tell(study, p["trial_number"], None)
        store.set_trial_state(p["id"], "abandoned")
        abandoned.append(p["trial_number"])
    out = []
    for _ in range(n):
        trial = study.ask(dists)
        params = {k: _short(v) for k, v in trial.params.items()}
        store.insert_trial(study.study_name, trial.number, None, "suggest", params, "pending")
        trial.set_user_attr("source", "suggest")
        call = (f"run_experiment(description=\"suggest trial {trial.number}: "
                + ", ".join(f"{k}={v}" for k, v in params.items()) + f"\", params={json.dumps(params)})")
        out.append(Suggestion(trial=trial.number, params=params, run=call))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    S = optuna.trial.TrialState
    best = None
    try:
        bt = study.best_trial
        best = {"value": bt.value, "params": {k: _short(v) for k, v in bt.params.items()},
                "experiment_id": bt.user_attrs.get("experiment_id") or store.experiment_of_trial(study.study_name, bt.number)}
    except ValueError:
        pass
    return SuggestResult(
        study=study.study_name, storage=storage_url(lab), sampler=cfg.hpo_sampler,
        trials_complete=states.count(S.COMPLETE), trials_failed=states.count(S.FAIL),
        trials_running=states.count(S.RUNNING), best=best, suggestions=out, abandoned=abandoned,
        next="run each with run_experiment(params=...) exactly as given (your own params are learned from too); "
             "a new suggest call abandons suggestions not run by then")


def _suggest_in_child(lab: Lab, n: int) -> SuggestResult:
    """GPSampler imports torch: run it in a child so the MCP server never loads torch."""
    # -P and a cwd outside the workspace: a tools/ folder left in the workspace must not shadow ours
    proc = subprocess.run([sys.executable, "-P", "-m", "tools.hpo", "suggest", str(lab.root), str(n)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, cwd=str(lab.state_dir))
    if proc.returncode != 0:
        raise ToolError(f"the GP suggest child failed: {proc.stderr.strip()[-1500:]}. Fix: set hpo_sampler = \"tpe\" "
                        "in autoresearch.toml, or install torch and scipy.")
    return SuggestResult.model_validate_json(proc.stdout.strip().splitlines()[-1])


def after_run(lab: Lab, experiment_id: int) -> None:
    """Tell the study about a finished (or cancelled) run, so that `suggest` finds it up to date
    (incremental: one run per call, whether or not suggest was ever called). Never raises: a recording
    must not fail because of Optuna; a workspace without a search space or without Optuna skips it."""
    try:
        if not lab.config.search_space or importlib.util.find_spec("optuna") is None:
            return
        with _locked(lab):
            sync(lab, open_study(lab), distributions(lab.config.search_space))
    except Exception as exc:  # noqa: BLE001
        print(f"hpo: could not tell experiment {experiment_id} to the study: {type(exc).__name__}: {exc}",
              file=sys.stderr)


# -- defaults for `autoresearch init` -------------------------------------------------------------
def default_search_space(preset: str) -> dict[str, dict]:
    if preset == "toy":
        return {"LR": {"type": "float", "low": 0.01, "high": 3.0, "log": True},
                "STEPS": {"type": "int", "low": 50, "high": 200},   # the toy's step budget: more is not progress
                "L2": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}
    steps = {"seed": 800, "replay": 400}.get(preset, 300)  # MAX_STEPS of each preset
    batches = [32, 48, 64, 96] if preset == "seed" else [32, 48, 64, 128]
    return {"LR": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "BATCH_SIZE": {"type": "categorical", "choices": batches},
            "EMBED_DIM": {"type": "categorical", "choices": [128, 256, 512] if preset == "seed" else [64, 128, 256]},
            "EXPERT_PROB": {"type": "float", "low": 0.0, "high": 1.0},
            "WARMUP_STEPS": {"type": "int", "low": 0, "high": steps // 2}}


def search_space_toml(space: dict[str, dict]) -> str:
    lines = ["# suggest() tunes these train.py constants with Optuna (TPE); humans edit this list"]
    for name, p in space.items():
        lines.append(f"[search_space.{name}]")
        for k, v in p.items():
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


# -- helpers -----------------------------------------------------------------------------------
def _isnum(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(v):
    return float(f"{v:.6g}") if isinstance(v, float) else v


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "suggest":
        print("usage: python -m tools.hpo suggest WORKSPACE N", file=sys.stderr)
        return 2
    lab = Lab.open(argv[1])
    try:
        print(suggest(lab, int(argv[2]), in_child=True).model_dump_json())
    except ToolError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
