"""A PostgreSQL server of this machine's own, for `make dev-team` and the DuckLake tests.

It runs Debian's `postgresql` binaries (initdb, pg_ctl) on a data directory we own, listening on 127.0.0.1 only,
with trust authentication for local connections: a development catalog, not a production database (deploy/
takes an external PostgreSQL or a StatefulSet with a password). PostgreSQL refuses to run as root, so as root
the server runs as the `postgres` system user that Debian's package creates.

    python -m core.local_postgres start --dir var/postgres --port 5433 --database lake --database dagster
    python -m core.local_postgres stop --dir var/postgres
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "platform"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server binaries are not installed here (or cannot run as this user)."""


def find_bindir() -> Path:
    """Where initdb and pg_ctl are: PG_BINDIR, else PATH, else Debian's /usr/lib/postgresql/<newest>/bin."""
    explicit = os.environ.get("PG_BINDIR", "").strip()
    candidates = [Path(explicit)] if explicit else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    candidates += [Path(p) for p in versions]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL's server is not installed (no initdb/pg_ctl on PATH, in PG_BINDIR or under "
        "/usr/lib/postgresql/*/bin): install Debian's `postgresql` package (apt-get install postgresql)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user() -> list[str]:
    """The command prefix that runs PostgreSQL's binaries as a user it accepts (never root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root needs `runuser` (util-linux) to start PostgreSQL as `postgres`")
    try:
        subprocess.run(["id", "postgres"], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        raise PostgresUnavailable("running as root needs the `postgres` user (Debian's postgresql package)") from exc
    return [runuser, "-u", "postgres", "--"]


@dataclass(frozen=True)
class LocalPostgres:
    """One server: `data_dir` holds its cluster (`pgdata/`), socket and log."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    fsync: bool = True  # tests turn it off: their clusters are thrown away

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def conninfo(self, database: str) -> str:
        """libpq conninfo (what DUCKLAKE_CATALOG takes) for `database` on this server."""
        return f"dbname={database} host={self.host} port={self.port} user={SUPERUSER}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*_as_server_user(), *args]
        done = subprocess.run(command, capture_output=True, text=True, cwd="/")
        if done.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}\n{log}")
        return done

    def _own(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        closed = [p for p in path.resolve().parents if not os.stat(p).st_mode & 0o001]
        if closed:
            raise PostgresUnavailable(
                f"as root, PostgreSQL runs as `postgres`, which cannot enter {closed[0]} (mode "
                f"{oct(os.stat(closed[0]).st_mode & 0o777)}) to reach {path}: put its directory somewhere others can "
                "enter (e.g. under /tmp) or run as a non-root user"
            )
        shutil.chown(path, user="postgres", group="postgres")

    def start(self) -> LocalPostgres:
        """initdb on first use, then start the server and wait until it accepts connections."""
        bindir = find_bindir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data_dir)
        if not (self.pgdata / "PG_VERSION").is_file():
            self._run(
                str(bindir / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER,
                "--auth=trust", "--encoding=UTF8", "--no-instructions",
            )  # fmt: skip
        options = f"-h {self.host} -p {self.port} -k {self.data_dir}"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(bindir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_file), "-o", options, "-w", "start"
        )
        return self

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self._run(str(find_bindir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """Create `name` unless it exists; returns its conninfo."""
        psql = [str(find_bindir() / "psql"), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-v"]
        exists = subprocess.run(
            [*psql, "ON_ERROR_STOP=1", "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run(
                [*psql, "ON_ERROR_STOP=1", "-d", "postgres", "-c", f'CREATE DATABASE "{name}"'],
                capture_output=True,
                text=True,
                check=True,
            )
        return self.conninfo(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.local_postgres", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", required=True, type=Path, help="data directory (created on first start)")
    parser.add_argument("--port", type=int, default=5433)
    parser.add_argument("--database", action="append", default=[], help="create this database (repeatable)")
    args = parser.parse_args(argv)
    server = LocalPostgres(args.dir.resolve(), args.port)
    if args.action == "stop":
        server.stop()
        return
    if (server.pgdata / "postmaster.pid").exists():
        print(f"PostgreSQL already running on {server.host}:{server.port} ({server.pgdata})")
    else:
        server.start()
        print(f"PostgreSQL started on {server.host}:{server.port} ({server.pgdata}); log {server.log_file}")
    for name in args.database:
        print(f"{name}: {server.create_database(name)}")


if __name__ == "__main__":
    main()
