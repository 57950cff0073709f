import dataclasses

import pytest

from regmix_ds.core import config as config_module
from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from tests.conftest import ROOT

SECTIONS = {
    "data": config_module.DataConfig, "data.domains.<name>": config_module.DomainSource,
    "swarm": config_module.SwarmConfig, "proxy": config_module.ProxyConfig,
    "fit": config_module.FitConfig, "simulate": config_module.SimulateConfig,
}


def test_every_config_key_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    keys = [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    undocumented = [key for key in keys if f"| `{key}` |" not in readme]
    assert not undocumented


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, problem", [
    ("data: {domains: {a: {paths: [a.jsonl]}}}\n", "missing key work_dir"),
    ("work_dir: w\ndata: {domains: {a: {paths: [a.jsonl]}}}\nswarn: {}\n", "unknown key.*swarn"),
    ("work_dir: w\ndata: {domains: {a: {paths: [a.jsonl]}}, valid_documents: many}\n",
     "data.valid_documents: expected int"),
    ("work_dir: w\ndata: {domains: {a: {paths: [a.jsonl]}}}\nproxy: {deepspeed_config: d.json, train_tokens: 0}\n",
     "proxy.train_tokens: must be >= 1"),
    ("work_dir: w\ndata: {domains: {a: {paths: [a.jsonl]}}}\nswarm: {n: 0}\n",
     "swarm.n: must be between 1 and 100,000, got 0"),
    ("work_dir: w\ndata: {domains: {../a: {paths: [a.jsonl]}}}\n", "invalid domain name"),
    ("work_dir: [w\n", "not valid YAML"),
])
def test_bad_config_is_one_line_naming_the_file(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(RegmixError, match=problem) as info:
        ExperimentConfig.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_paths_resolve_against_the_config_file(tmp_path):
    path = write(tmp_path, "work_dir: w\ndata: {domains: {a: {paths: [a.jsonl]}}}\n"
                           "proxy: {deepspeed_config: d.json, train_tokens: 8}\n")
    experiment = ExperimentConfig.load(path)
    assert experiment.work.manifest == tmp_path / "w" / "data" / "manifest.json"
    assert experiment.resolve(experiment.require_proxy().deepspeed_config) == tmp_path / "d.json"


def test_the_readme_example_config_is_valid(tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = readme.split("`pile.yaml`:\n```yaml\n", 1)[1].split("```", 1)[0]
    experiment = ExperimentConfig.load(write(tmp_path, example))
    assert len(experiment.data.domains) == 17
    assert (experiment.swarm.n, experiment.require_proxy().preset, experiment.proxy.train_tokens) == (
        512, "proxy-1m", 10**9)
    assert experiment.data.tokenizer == "EleutherAI/gpt-neox-20b" and experiment.fit.target == "pile_cc"


def test_the_readme_reference_is_generated_from_the_settings():
    from regmix_ds.commands.reference import reference

    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- reference:begin -->\n", 1)[1].split("<!-- reference:end -->", 1)[0]
    assert section == reference(), "README reference is stale: paste the output of `regmix-ds reference`"
