"""The workspace's git repo: snapshots under refs/autoresearch/*, restores, diffs.

Snapshots are commits built with a private index, so a run never moves the user's branch nor
touches their staging area. All git calls are argv lists (no shell).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tools.errors import ToolError

EXP_REF = "refs/autoresearch/exp/{id}"
BEST_REF = "refs/autoresearch/best"
SAVED_REF = "refs/autoresearch/saved"  # the editable files as they were before the last revert
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "autoresearch", "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
    "GIT_COMMITTER_NAME": "autoresearch", "GIT_COMMITTER_EMAIL": "autoresearch@localhost",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
}


class Workspace:
    def __init__(self, root: Path, editable: list[str]):
        self.root = Path(root).resolve()
        self.editable = list(editable)

    # -- plumbing ------------------------------------------------------------------------
    def git(self, *args: str, env: dict | None = None, input: bytes | None = None, check: bool = True) -> str:
        full_env = {**os.environ, **_GIT_ENV, **(env or {})}
        proc = subprocess.run(["git", "-C", str(self.root), *args], env=full_env, input=input,
                              capture_output=True, stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise ToolError(f"git {' '.join(args[:3])} failed: {proc.stderr.decode(errors='replace').strip()[-500:]}")
        return proc.stdout.decode(errors="replace")

    def git_bytes(self, *args: str) -> bytes | None:
        proc = subprocess.run(["git", "-C", str(self.root), *args], env={**os.environ, **_GIT_ENV},
                              capture_output=True, stdin=subprocess.DEVNULL)
        return proc.stdout if proc.returncode == 0 else None

    def head(self) -> str | None:
        out = self.git("rev-parse", "--verify", "-q", "HEAD", check=False).strip()
        return out or None

    def ref(self, name: str) -> str | None:
        out = self.git("rev-parse", "--verify", "-q", name + "^{commit}", check=False).strip()
        return out or None

    # -- lifecycle -----------------------------------------------------------------------
    @staticmethod
    def init_repo(root: Path) -> None:
        root = Path(root)
        if not (root / ".git").exists():
            subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True, env={**os.environ, **_GIT_ENV})

    def commit_all(self, message: str) -> str:
        """Initial commit of the workspace (used by init only)."""
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    # -- snapshots -----------------------------------------------------------------------
    def snapshot(self, message: str, contents: dict[str, bytes] | None = None, base: str | None = None) -> str:
        """Commit the current editable files on top of HEAD's tree; no branch or index moves.
        `contents` replaces some files' bytes in the snapshot (not on disk). With `base`, the
        snapshot is that commit's tree with only `contents` replaced (a seed rerun of a snapshot),
        and `base` is its parent. The commit is reachable once set_experiment_ref names it."""
        if base is None:
            missing = [p for p in self.editable if not (self.root / p).is_file()]
            if len(missing) == len(self.editable):
                raise ToolError(f"none of the editable files exist ({', '.join(missing)}). "
                                "Fix: restore them with revert('best') or check `editable` in autoresearch.toml.")
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            parent = base or self.head()
            if parent:
                self.git("read-tree", parent, env=env)
            if base is None:
                present = [p for p in self.editable if (self.root / p).is_file()]
                gone = [p for p in self.editable if p not in present]
                self.git("add", "-f", "--", *present, env=env)
                if gone and parent:
                    self.git("rm", "-q", "--cached", "--ignore-unmatch", "--", *gone, env=env)
            for rel, data in (contents or {}).items():
                blob = self.git("hash-object", "-w", "--stdin", input=data).strip()
                self.git("update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}", env=env)
            tree = self.git("write-tree", env=env).strip()
        parents = ["-p", parent] if parent else []
        return self.git("commit-tree", tree, *parents, "-m", message).strip()

    def set_experiment_ref(self, experiment_id: int, commit: str) -> None:
        self.git("update-ref", EXP_REF.format(id=experiment_id), commit)

    def advance_best(self, commit: str) -> None:
        self.git("update-ref", BEST_REF, commit)

    def read_snapshot_file(self, commit: str, path: str) -> bytes | None:
        return self.git_bytes("show", f"{commit}:{path}")

    def export_snapshot(self, commit: str, dest: Path) -> list[str]:
        """Write the snapshot's editable files into dest (the run's code dir)."""
        written = []
        for rel in self.editable:
            data = self.read_snapshot_file(commit, rel)
            if data is None:
                continue
            target = Path(dest) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append(rel)
        return written

    def matches(self, commit: str | None) -> bool:
        """Whether the editable files on disk are byte-equal to the snapshot's."""
        if not commit:
            return False
        for rel in self.editable:
            data = self.read_snapshot_file(commit, rel)
            target = self.root / rel
            if (data is None) != (not target.is_file()) or (data is not None and target.read_bytes() != data):
                return False
        return True

    def save_edits(self) -> str:
        """Snapshot the editable files as they are now under SAVED_REF (before a revert replaces them)."""
        commit = self.snapshot("edits saved before a revert")
        self.git("update-ref", SAVED_REF, commit)
        return commit

    def restore(self, commit: str) -> list[str]:
        """Make the editable files byte-equal to the snapshot's; nothing else is touched."""
        changed = []
        for rel in self.editable:
            data = self.read_snapshot_file(commit, rel)
            target = self.root / rel
            if data is None:
                if target.exists():
                    target.unlink()
                    changed.append(rel)
                continue
            if not target.is_file() or target.read_bytes() != data:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".autoresearch-tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
                changed.append(rel)
        return changed

    def diff(self, base: str | None, commit: str, max_chars: int = 20_000) -> str:
        """Unified diff of the editable files between two snapshots (base None: against HEAD's parent tree)."""
        if base is None:
            base = self.git("rev-parse", "-q", "--verify", f"{commit}^", check=False).strip() or None
        if base is None:
            return "(first snapshot: no parent to diff against)"
        out = self.git("diff", "--no-color", "--unified=3", base, commit, "--", *self.editable)
        if len(out) > max_chars:
            out = out[:max_chars] + f"\n... diff truncated at {max_chars} characters ..."
        return out or "(no change in the editable files)"
