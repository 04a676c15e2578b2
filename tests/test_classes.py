"""Labels of more than two classes: a softmax over them, or one class against the rest with --positive; a
quantity imported as a label column is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import featstore
from featstore.errors import InputError
from featstore.tables import import_labels, read_expression, read_labels
from fusion.api import CVOptions, cv
from fusion.train import TrainConfig

from .conftest import MIXOMICS, PAM50_LABELS


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """Real mixOmics TCGA-BRCA expression (150 training samples x 200 genes) with its three PAM50 classes."""
    path = tmp_path_factory.mktemp("classes") / "brca.zarr"
    with featstore.open(path, "a") as s:
        expr, _ = read_expression(MIXOMICS / "data_train_mrna.csv")
        s.write_expression("expression", expr)
        import_labels(s, MIXOMICS / "data_train_subtype.csv", "labels", id_column="participant_code",
                      label_column="subtype", label_map=None)
    return path, expr


@pytest.mark.filterwarnings("ignore::FutureWarning:sklearn")
def test_three_classes_train_a_softmax_beside_scikit_learn_and_one_vs_rest_on_request(three_classes):
    path, expr = three_classes
    run = cv(path, "logreg", CVOptions(label_map=None))
    assert run.cohort.target == "multiclass" and run.cohort.classes == ("Basal", "Her2", "LumA")
    with featstore.open(path) as s:
        table = s.read_labels("labels")
    label_of = dict(zip(table.patient_ids, table.labels))
    y = np.array([run.cohort.classes.index(label_of[p]) for p in run.cohort.patient_ids])
    np.testing.assert_array_equal(run.cohort.y, y)
    # An independent scikit-learn reference on the same patients and folds: standardised genes, multinomial L2
    # logistic regression with its own inner CV. Macro one-vs-rest ROC-AUC and macro-F1 of the argmax.
    rows = {p: i for i, p in enumerate(expr.patient_ids)}
    x = expr.values[[rows[p] for p in run.cohort.patient_ids]]
    ref = np.zeros((len(y), 3))
    for f in range(5):
        test = run.result.assign[0] == f
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=5, max_iter=3000)).fit(x[~test], y[~test])
        ref[test] = model.predict_proba(x[test])
    ours = run.metrics["summary"]
    assert ours["roc_auc"]["pooled"] > 0.97
    assert abs(ours["roc_auc"]["pooled"] - roc_auc_score(y, ref, multi_class="ovr")) < 0.01
    assert abs(ours["f1"]["pooled"] - f1_score(y, ref.argmax(1), average="macro")) < 0.03
    # The summary is scikit-learn's metric of our own out-of-fold probabilities.
    assert ours["roc_auc"]["pooled"] == pytest.approx(roc_auc_score(y, run.result.oof[0], multi_class="ovr"), abs=1e-12)
    assert ours["f1"]["pooled"] == pytest.approx(f1_score(y, run.result.oof[0].argmax(1), average="macro"), abs=1e-12)
    with pytest.raises(ValueError, match=r"--positive 'Normal' is not a class of the labels"):
        cv(path, "logreg", CVOptions(label_map=None, positive="Normal"))
    run = cv(path, "logreg", CVOptions(label_map=None, positive="Basal", train=TrainConfig(calibrate="none")))
    assert run.cohort.classes == ("not_Basal", "Basal") and run.cohort.target == "binary"
    yb = np.array([label_of[p] == "Basal" for p in run.cohort.patient_ids], int)
    np.testing.assert_array_equal(run.cohort.y, yb)
    # Basal against the rest is easy from expression: a two-class reference finds it so too.
    ref = np.zeros(len(yb))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, yb):
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=5, max_iter=2000)).fit(x[train], yb[train])
        ref[test] = model.predict_proba(x[test])[:, 1]
    ours = run.metrics["summary"]["roc_auc"]["pooled"]
    assert ours > 0.95 and abs(ours - roc_auc_score(yb, ref)) < 0.03, (ours, roc_auc_score(yb, ref))


def test_a_quantity_is_not_a_label_column():
    """Days to death from the Pan-Gyn patient table: hundreds of distinct numbers, refused by name."""
    with pytest.raises(InputError, match=r"column 'days_to_death' holds \d+ distinct values .*all numbers.*a time or "
                                         r"a measurement"):
        read_labels(PAM50_LABELS / "brca_subtype_patient_table.csv", id_column="patient_barcode",
                    label_column="days_to_death", label_map=None)
    table, _ = read_labels(PAM50_LABELS / "brca_subtype_patient_table.csv", id_column="patient_barcode",
                           label_column="vital_status", label_map=None)
    assert set(table.labels) == {"Alive", "Dead"}
