"""Labels of more than two classes: refused with the route offered, trained one-vs-rest with --positive; a
quantity imported as a label column is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
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
def test_three_classes_are_refused_with_the_route_and_trained_one_vs_rest(three_classes):
    path, expr = three_classes
    with pytest.raises(ValueError, match=r"labels have 3 classes .*--positive CLASS \(e\.g\. --positive Her2\)"):
        cv(path, "logreg", CVOptions(label_map=None))
    with pytest.raises(ValueError, match=r"--positive 'Normal' is not a class of the labels"):
        cv(path, "logreg", CVOptions(label_map=None, positive="Normal"))
    run = cv(path, "logreg", CVOptions(label_map=None, positive="Basal", train=TrainConfig(calibrate="none")))
    assert run.cohort.classes == ("not_Basal", "Basal")
    with featstore.open(path) as s:
        table = s.read_labels("labels")
    label_of = dict(zip(table.patient_ids, table.labels))
    y = np.array([label_of[p] == "Basal" for p in run.cohort.patient_ids], int)
    np.testing.assert_array_equal(run.cohort.y, y)
    # An independent scikit-learn reference on the same patients: standardised genes, L2 logistic with its own
    # inner CV, 5-fold stratified CV. Basal against the rest is easy from expression; both find it so.
    rows = {p: i for i, p in enumerate(expr.patient_ids)}
    x = expr.values[[rows[p] for p in run.cohort.patient_ids]]
    ref = np.zeros(len(y))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=5, max_iter=2000)).fit(x[train], y[train])
        ref[test] = model.predict_proba(x[test])[:, 1]
    ours = run.metrics["summary"]["roc_auc"]["pooled"]
    assert ours > 0.95 and abs(ours - roc_auc_score(y, ref)) < 0.03, (ours, roc_auc_score(y, ref))


def test_a_quantity_is_not_a_label_column():
    """Days to death from the Pan-Gyn patient table: hundreds of distinct numbers, refused by name."""
    with pytest.raises(InputError, match=r"column 'days_to_death' holds \d+ distinct values .*all numbers.*a time or "
                                         r"a measurement"):
        read_labels(PAM50_LABELS / "brca_subtype_patient_table.csv", id_column="patient_barcode",
                    label_column="days_to_death", label_map=None)
    table, _ = read_labels(PAM50_LABELS / "brca_subtype_patient_table.csv", id_column="patient_barcode",
                           label_column="vital_status", label_map=None)
    assert set(table.labels) == {"Alive", "Dead"}
