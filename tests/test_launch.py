"""launch/: the TPU VM and multi-host GPU scripts, checked through their --dry-run output."""

import pathlib
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU_VM = ROOT / "launch" / "tpu_vm.sh"
GPU = ROOT / "launch" / "gpu_multihost.sh"


def _dry_run(script: pathlib.Path, *args: str) -> list[list[str]]:
    """The commands a --dry-run prints, each split into shell words (comments dropped)."""
    out = subprocess.run(
        ["bash", str(script), "--dry-run", *args], capture_output=True, text=True, check=True
    )
    return [shlex.split(line, comments=True) for line in out.stdout.splitlines() if line]


def _find(commands: list[list[str]], *prefix: str) -> list[list[str]]:
    return [c for c in commands if c[: len(prefix)] == list(prefix)]


def _flag(command: list[str], name: str) -> str:
    values = [w.split("=", 1)[1] for w in command if w.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} in {command}"
    return values[0]


def test_tpu_vm_up_creates_installs_runs_on_all_workers_and_tails():
    commands = _dry_run(
        TPU_VM,
        "--name=sd",
        "--zone=europe-west4-a",
        "--accelerator-type=v5litepod-16",
        "--runtime-version=v2-alpha-tpuv5-lite",
        "--spot",
        "--config=configs/hubert_base.py:stacking=top",
        "--workdir=gs://bucket/runs/a",
        "up",
        "--",
        "--config.batch_size=256",
        "--config.data.path=gs://bucket/my data",
    )
    (create,) = _find(commands, "gcloud", "compute", "tpus", "tpu-vm", "create", "sd")
    assert _flag(create, "zone") == "europe-west4-a"
    assert _flag(create, "accelerator-type") == "v5litepod-16"
    assert _flag(create, "version") == "v2-alpha-tpuv5-lite"
    assert "--spot" in create and "--preemptible" not in create

    (scp,) = _find(commands, "gcloud", "compute", "tpus", "tpu-vm", "scp")
    assert "--worker=all" in scp and scp[6].startswith("sd:")
    install, start, tail = _find(commands, "gcloud", "compute", "tpus", "tpu-vm", "ssh", "sd")
    assert "--worker=all" in install and "pip install -e ~/stackdistill" in _flag(
        install, "command"
    )
    assert "--worker=all" in start
    main = shlex.split(_flag(start, "command"))
    at = main.index("stackdistill.main")
    assert main[at - 2 : at] == ["python3", "-m"]
    assert "--config=configs/hubert_base.py:stacking=top" in main
    assert "--workdir=gs://bucket/runs/a" in main
    after_mode = main[main.index("--mode=distill") + 1 :][:2]
    assert after_mode == ["--config.batch_size=256", "--config.data.path=gs://bucket/my data"]
    assert main[-1] == "&"  # in the background: the log is followed by `logs`
    assert "--worker=0" in tail and "tail" in _flag(tail, "command")
    assert [c[4] for c in commands if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]] == [
        "create",
        "scp",
        "ssh",
        "ssh",
        "ssh",
    ]


def test_tpu_vm_queued_resource_and_delete():
    commands = _dry_run(TPU_VM, "--name=sd", "--queued", "--spot", "create", "delete")
    (create,) = _find(commands, "gcloud", "compute", "tpus", "queued-resources", "create", "sd")
    assert _flag(create, "node-id") == "sd" and "--spot" in create
    assert _flag(create, "runtime-version") == "tpu-ubuntu2204-base"
    assert _find(commands, "gcloud", "compute", "tpus", "queued-resources", "describe", "sd")
    (delete,) = _find(commands, "gcloud", "compute", "tpus", "queued-resources", "delete", "sd")
    assert "--force" in delete


def test_tpu_vm_refuses_run_without_workdir_and_bad_combinations():
    for args in (["run"], ["--queued", "--preemptible", "create"], ["fly"]):
        out = subprocess.run(["bash", str(TPU_VM), "--dry-run", *args], capture_output=True)
        assert out.returncode == 2, args


def test_tpu_vm_dry_run_starts_nothing(tmp_path):
    # A gcloud on PATH that records calls: a dry run must never reach it.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "gcloud").write_text(f"#!/bin/sh\necho called >> {tmp_path / 'calls'}\n")
    (fake / "gcloud").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    subprocess.run(
        ["bash", str(TPU_VM), "--dry-run", "--workdir=gs://b/r", "up", "delete"],
        env=env,
        check=True,
        capture_output=True,
    )
    assert not (tmp_path / "calls").exists()


def test_gpu_slurm_one_task_per_node_with_coordinator_count_and_id():
    (cmd,) = _dry_run(
        GPU, "--slurm", "--nodes=4", "--coordinator=node001", "--workdir=/shared/r", "--port=9999"
    )
    assert cmd[0] == "srun" and _flag(cmd, "ntasks") == "4"
    assert _flag(cmd, "ntasks-per-node") == "1"
    assert cmd[-3:-1] == ["bash", "-c"]
    task = cmd[-1]
    assert "JAX_COORDINATOR_ADDRESS=node001:9999" in task
    assert "JAX_NUM_PROCESSES=4" in task and "JAX_PROCESS_ID=$SLURM_PROCID" in task
    assert "python -m stackdistill.main --config=configs/hubert_base.py" in task
    assert "--workdir=/shared/r" in task


def test_gpu_slurm_reads_the_allocation(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\necho gpu17; echo gpu18\n")
    (fake / "scontrol").chmod(0o755)
    env = {
        "PATH": f"{fake}:/usr/bin:/bin",
        "SLURM_JOB_NODELIST": "gpu[17-18]",
        "SLURM_JOB_NUM_NODES": "2",
    }
    out = subprocess.run(
        ["bash", str(GPU), "--dry-run", "--slurm", "--workdir=/r"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    task = shlex.split(out.stdout)[-1]
    assert "JAX_COORDINATOR_ADDRESS=gpu17:12355" in task and "JAX_NUM_PROCESSES=2" in task


def test_gpu_hosts_file_ssh_per_host(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("gpu-a  # the coordinator\n\ngpu-b\ngpu-c\n")
    commands = _dry_run(GPU, f"--hosts={hosts}", "--workdir=gs://b/r", "--", "--config.seed=3")
    assert [c[:4] for c in commands] == [
        ["ssh", "-o", "BatchMode=yes", h] for h in ("gpu-a", "gpu-b", "gpu-c")
    ]
    for i, command in enumerate(commands):
        remote = command[-1]
        assert "JAX_COORDINATOR_ADDRESS=gpu-a:12355" in remote
        assert f"JAX_NUM_PROCESSES=3 JAX_PROCESS_ID={i} " in remote
        assert remote.endswith("--workdir=gs://b/r --mode=distill --config.seed=3")


def test_gpu_single_host_is_a_plain_run():
    (cmd,) = _dry_run(GPU, "--workdir=/r", "--config=configs/demo.py")
    assert cmd == [
        "python",
        "-m",
        "stackdistill.main",
        "--config=configs/demo.py",
        "--workdir=/r",
        "--mode=distill",
    ]


@pytest.mark.parametrize(
    "args", [[], ["--slurm", "--workdir=/r"], ["--hosts=/nonexistent", "--workdir=/r"]]
)
def test_gpu_refuses_incomplete_setups(args):
    env = {"PATH": "/usr/bin:/bin"}  # no SLURM variables, no scontrol
    out = subprocess.run(["bash", str(GPU), "--dry-run", *args], env=env, capture_output=True)
    assert out.returncode == 2
