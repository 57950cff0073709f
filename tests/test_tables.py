import numpy as np
import pytest

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.names import loss_name, weight_name
from regmix_ds.core.settings import parse_pairs
from regmix_ds.regress.tables import Target, prior_by_domain, read_regmix_tables, read_results, read_weights


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "column, name",
    [
        ("train_the_pile_pile_cc", "pile_cc"),
        ("train_the_pile_unzip_pile_cc", "pile_cc"),
        ("w:the_pile_x", "the_pile_x"),
        ("github", "github"),
    ],
)
def test_weight_names(column, name):
    assert weight_name(column) == name


@pytest.mark.parametrize(
    "column, name",
    [
        ("metric/the_pile_pile_cc_val_loss", "pile_cc"),
        ("valid_the_pile_unzip_github", "github"),
        ("loss:target_val_loss", "target_val_loss"),
    ],
)
def test_loss_names(column, name):
    assert loss_name(column) == name


def test_regmix_tables_join_on_index_and_renormalise(tmp_path):
    mixtures = write(tmp_path / "m.csv", "index,train_the_pile_a,train_the_pile_b\n1,0.3,0.6\n2,0.5,0.5\n")
    losses = write(tmp_path / "l.csv", "index,metric/the_pile_a_val_loss\n2,4.0\n1,5.0\n")
    table = read_regmix_tables(mixtures, losses)
    assert table.domains == ("a", "b") and table.index == ("1", "2")
    np.testing.assert_allclose(table.weights, [[1 / 3, 2 / 3], [0.5, 0.5]])
    np.testing.assert_array_equal(table.losses["a"], [5.0, 4.0])  # joined by index, not by line
    assert set(table.inputs) == {"mixtures", "losses"} and len(table.inputs["losses"]["sha256"]) == 64


def test_results_csv_keeps_only_done_runs(tmp_path):
    path = write(
        tmp_path / "results.csv",
        "index,status,w:a,w:b,loss:a,loss:target,tokens,wall_seconds\n"
        "1,done,0.5,0.5,3.0,4.0,100,1.0\n2,failed,0.2,0.8,,,0,0\n3,done,1,3,2.5,3.5,100,1.0\n",
    )
    table = read_results(path)
    assert table.index == ("1", "3") and table.domains == ("a", "b")
    np.testing.assert_allclose(table.weights[1], [0.25, 0.75])
    np.testing.assert_array_equal(Target.parse("target").values(table), [4.0, 3.5])


def test_weighted_target_resolves_short_and_full_names(tmp_path):
    mixtures = write(tmp_path / "m.csv", "index,a,b\n1,1,0\n2,0,1\n")
    losses = write(tmp_path / "l.csv", "index,metric/the_pile_a_val_loss,metric/the_pile_b_val_loss\n1,2,4\n2,6,8\n")
    table = read_regmix_tables(mixtures, losses)
    target = Target.parse("a=0.25,metric/the_pile_b_val_loss=0.75")
    np.testing.assert_allclose(target.values(table), [0.25 * 2 + 0.75 * 4, 0.25 * 6 + 0.75 * 8])
    assert target.resolved(table).terms == (("a", 0.25), ("b", 0.75))


@pytest.mark.parametrize(
    "mixtures, losses, target, problem",
    [
        ("index,a\n1,1\n2,1\n", "index,x\n1,3\n3,3\n", "x", r"index 2 of .* has no loss row; index 3 has no row"),
        ("index,a\n1,1\n2,1\n", "index,x\n1,3\n2,\n", "x", r"missing or not finite at index 2"),
        ("index,a\n1,1\n2,1\n", "index,x\n1,3\n2,nan\n", "x", r"missing or not finite at index 2"),
        ("index,a\n1,1\n2,1\n", "index,x\n1,3\n2,3\n", "nope", r"no loss column 'nope'"),
        ("index,a,b\n1,1,-0.5\n2,1,0\n", "index,x\n1,3\n2,3\n", "x", r"index 1: negative weight"),
        ("index,a\n1,1\n1,1\n", "index,x\n1,3\n2,3\n", "x", r"index 1 appears more than once"),
        ("index,a\n1,0\n2,1\n", "index,x\n1,3\n2,3\n", "x", r"index 1: all weights are zero"),
        ("index,a\n1,abc\n", "index,x\n1,3\n", "x", r"not a number: 'abc'"),
        ("a,b\n1,1\n", "index,x\n1,3\n", "x", r"no 'index' column"),
    ],
)
def test_bad_tables_are_one_line_errors(tmp_path, mixtures, losses, target, problem):
    m, loss_file = write(tmp_path / "m.csv", mixtures), write(tmp_path / "l.csv", losses)
    with pytest.raises(RegmixError, match=problem) as info:
        Target.parse(target).values(read_regmix_tables(m, loss_file))
    assert "\n" not in str(info.value)


def test_weights_table_checks_domains_by_name(tmp_path):
    table = read_weights(write(tmp_path / "m.csv", "index,train_the_pile_b,train_the_pile_a\n7,0.2,0.8\n"))
    np.testing.assert_allclose(table.aligned(("a", "b")), [[0.8, 0.2]])
    with pytest.raises(RegmixError, match="has 2 domain columns, expected 3 .*missing c"):
        table.aligned(("a", "b", "c"))


def test_prior_flat_or_under_train(tmp_path):
    nested = prior_by_domain(write(tmp_path / "p.yaml",
                                   "train:\n  train_the_pile_unzip_a: 1\n  train_the_pile_unzip_b: 3\nvalid: {}\n"))
    flat = prior_by_domain(write(tmp_path / "q.json", '{"a": 1, "b": 3}'))
    assert nested == flat == {"a": 1.0, "b": 3.0}
    with pytest.raises(RegmixError, match=r"prior of 'a' must be a number in \[0, 1e\+18\], got -1"):
        prior_by_domain(write(tmp_path / "r.yaml", "a: -1\n"))


@pytest.mark.parametrize("text, problem", [
    ("a", "needs a value"), ("a=1,a=2", "twice"), ("=1", "empty name"), ("a=inf", "not finite"),
])
def test_parse_pairs_errors(text, problem):
    with pytest.raises(RegmixError, match=problem):
        parse_pairs(text, "--max-weight")


def test_target_rejects_non_positive_coefficients():
    with pytest.raises(RegmixError, match="must be positive"):
        Target.parse("a=0")
