"""The package as users install it: one import name (gpt_neo_mtf) from a built wheel, console scripts that
answer --help without loading TensorFlow, and the flag names shared across tools (old names kept)."""
import glob
import json
import os
import platform
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from conftest import REPO

from gpt_neo_mtf.cli import check_dataset, create_tfrecords, huggingface

SCRIPTS = {"gpt-neo": "gpt_neo", "gpt-neo-create-tfrecords": "create_tfrecords",
           "gpt-neo-check-dataset": "check_dataset", "gpt-neo-train-tokenizer": "train_tokenizer",
           "gpt-neo-hf": "huggingface", "gpt-neo-loss-plot": "loss_plot"}


def test_setup_declares_every_command_line():
    with open(os.path.join(REPO, "setup.py")) as f:
        text = f.read()
    for script, module in SCRIPTS.items():
        assert '"%s = gpt_neo_mtf.cli.%s:main"' % (script, module) in text
    assert sorted(SCRIPTS.values()) == sorted(os.path.basename(p)[:-3] for p in glob.glob(REPO + "/cli/*.py")
                                              if not p.endswith("__init__.py"))


@pytest.mark.parametrize("module", sorted(SCRIPTS.values()))
def test_help_answers_without_tensorflow(module):
    """--help is parsed before the work module (and TensorFlow) is imported; defaults are shown."""
    code = ("import sys\nfrom gpt_neo_mtf.cli import %s as command\ntry:\n    command.main(['--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('LOADED', sorted(m for m in ('tensorflow', 'mesh_tensorflow', 'numpy') if m in sys.modules))"
            % module)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "LOADED []"
    if module in ("gpt_neo", "create_tfrecords"):
        assert "(default: 5000)" in done.stdout or "(default: 2048)" in done.stdout


def test_help_states_the_work_modules_values():
    """The numbers and names that --help spells out (without importing the work) are the ones used."""
    from gpt_neo_mtf.convert.huggingface import MASTER_DTYPES
    from gpt_neo_mtf.tfrecords_tools import create_tfrecords as records_work
    from gpt_neo_mtf.tfrecords_tools import train_tokenizer
    from gpt_neo_mtf.trainer.auto_layout import DEFAULT_DEVICE_MEMORY

    def flat(text):
        return " ".join(text.split())

    for command, expected in (
            (["gpt_neo"], "a TPU v3 core's %d)" % (DEFAULT_DEVICE_MEMORY / 2 ** 30)),
            (["train_tokenizer"], "<output_dir>/" + train_tokenizer.TOKENIZER_FILE),
            (["train_tokenizer"], "at least %d" % train_tokenizer.MIN_VOCAB_SIZE),
            (["create_tfrecords"], "{%s}" % ",".join(records_work.MODES)),
            (["huggingface", "import"], "{%s}" % ",".join(sorted(MASTER_DTYPES)))):
        output = subprocess.run([sys.executable, "-m", "gpt_neo_mtf.cli." + command[0]] + command[1:] + ["--help"],
                                capture_output=True, text=True, timeout=60).stdout
        assert expected in flat(output), (command, expected)


def test_old_flag_names_are_aliases(capsys):
    old = create_tfrecords.parse_args(["--input_dir", "a.jsonl", "--encoder_path", "tok.json"])
    new = create_tfrecords.parse_args(["--input", "a.jsonl", "--tokenizer", "tok.json"])
    assert vars(old) == vars(new) and new.input == ["a.jsonl"] and new.tokenizer == "tok.json"
    assert create_tfrecords.parse_args(["--input", "a", "--use_gpt2_tokenizer"]).tokenizer == "gpt2"
    assert check_dataset.parse_args(["x.tfrecords", "--use_gpt2_tokenizer"]).tokenizer == "gpt2"
    with pytest.raises(SystemExit):
        create_tfrecords.parse_args(["--input", "a", "--use_gpt2_tokenizer", "--tokenizer", "tok.json"])
    assert "--use_gpt2_tokenizer and --tokenizer tok.json name two tokenizers" in capsys.readouterr().err
    hf_old = huggingface.parse_args(["export", "--checkpoint", "run", "--output_dir", "hf"])
    hf_new = huggingface.parse_args(["export", "--model_path", "run", "--output_dir", "hf"])
    assert vars(hf_old) == vars(hf_new)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip wheel` builds from the files git tracks (no network: the running setuptools)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(source / os.path.dirname(name), exist_ok=True)
            with open(os.path.join(REPO, name), "rb") as f, open(source / name, "wb") as g:
                g.write(f.read())
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "-q", "-w", str(root / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (path,) = glob.glob(str(root / "dist" / "gpt_neo_mtf-*.whl"))
    return path


def test_the_wheel_holds_one_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"gpt_neo_mtf", "gpt_neo_mtf-0.1.0.dist-info"}
    for needed in ("gpt_neo_mtf/__init__.py", "gpt_neo_mtf/cli/gpt_neo.py", "gpt_neo_mtf/models/gpt.py",
                   "gpt_neo_mtf/configs/gpt_neo_125M.json", "gpt_neo_mtf/configs/dataset_configs/pile.json",
                   "gpt_neo_mtf/inputs/assets/gpt2/vocab.json", "gpt_neo_mtf/inputs/assets/gpt2/merges.txt"):
        assert needed in names
    assert not [name for name in names if name.startswith(("gpt_neo_mtf/tests/", "gpt_neo_mtf/bench/"))]
    assert "gpt_neo_mtf/setup.py" not in names


def test_the_wheel_installs_and_runs_beside_a_models_package(wheel, tmp_path, make_config):
    """Installed (not editable) into a fresh venv, run from a directory with packages of its own named
    models, inputs and trainer: every console script answers --help, and gpt-neo trains 2 steps."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                           "--disable-pip-version-check", "-q", wheel], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert sorted(n for n in os.listdir(site) if not n.startswith(("_", "."))) == [
        "gpt_neo_mtf", "gpt_neo_mtf-0.1.0.dist-info"]
    # The dependencies (TensorFlow, mesh-tf, ...) from this interpreter's site-packages: a plain path line
    # in a .pth, which (unlike the directory's own .pth files) does not bring this checkout's editable install.
    with open(os.path.join(site, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"
    for name in ("models", "inputs", "trainer"):
        os.makedirs(work / name)
        (work / name / "__init__.py").write_text("raise ImportError('the user\\'s own %s package')\n" % name)
    env = dict(os.environ, PYTHONPATH="", PYTHONDONTWRITEBYTECODE="1")
    where = subprocess.run([python, "-c", "import gpt_neo_mtf; print(gpt_neo_mtf.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where == os.path.join(site, "gpt_neo_mtf", "__init__.py")
    for script in SCRIPTS:
        done = subprocess.run([str(venv / "bin" / script), "--help"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (script, done.stderr)
        assert done.stdout.startswith("usage: %s " % script), done.stdout[:100]
    config = make_config(train_steps=2, iterations=1)
    done = subprocess.run([str(venv / "bin" / "gpt-neo"), "--model", config, "n_layer=1",
                           'attention_types=[[["global"], 1]]'], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 2/2" in done.stdout
    model_path = json.load(open(config))["model_path"]
    assert os.path.exists(os.path.join(model_path, "model.ckpt-2.index"))


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the default is set on x86-64 only")
@pytest.mark.parametrize("setting,enabled", [(None, True), ("0", False)])
def test_onednn_kernels_are_on_unless_the_environment_turns_them_off(setting, enabled):
    """TF 2.15 enables oneDNN itself only on CPUs with AVX-512 VNNI/BF16 or AMX; importing the package's TF
    enables it on every x86-64 CPU, and TF_ENABLE_ONEDNN_OPTS=0 still wins. bfloat16 matmuls then run at
    bfloat16 speed where oneDNN takes them (AVX512F or AVX-NE-CONVERT), never on Eigen's kernels."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = ("from gpt_neo_mtf.trainer.hardware import cpu_multiplies_bfloat16\n"
            "from tensorflow.python.util import _pywrap_util_port\n"
            "print(_pywrap_util_port.IsMklEnabled(), cpu_multiplies_bfloat16())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    onednn_bfloat16 = enabled and ("avx512f" in flags or "avx_ne_convert" in flags)
    assert done.stdout.split()[-2:] == [str(enabled), str(onednn_bfloat16)]
