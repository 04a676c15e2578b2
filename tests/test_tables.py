"""Gene and label ingestion: real TCGA tables, orientation, barcodes, and every bad input named precisely."""

from __future__ import annotations

import gzip

import pytest

import featstore
from featstore.tables import InputError, import_genes, import_labels, read_expression, read_labels

from .conftest import BIOLINKS, MIXOMICS, PAM50_LABELS, ROOT


def test_real_tcga_table_with_samples_as_columns_keeps_primary_tumours_and_never_a_normal():
    table, notes = read_expression(BIOLINKS, transform="log2p1")
    # 10 aliquots from 10 patients: 5 primary tumours (01A) and 5 solid-tissue normals (11A). A patient with
    # only a normal sample must not be imported: its row would carry the tumour's PAM50 label.
    assert table.values.shape == (5, 20530)
    assert table.sample_types == ["01"] * 5
    assert "TCGA-BH-A1FC" not in table.patient_ids
    assert any("5 patients dropped: they have only normal-tissue" in n and "TCGA-BH-A1FC" in n for n in notes)
    assert any("samples taken as columns (TCGA barcodes" in n for n in notes)
    everything, _ = read_expression(BIOLINKS, primary_only=False)
    assert len(everything.sample_ids) == 10 and everything.sample_types.count("11") == 5
    assert len(set(table.patient_ids)) == len(table.patient_ids)
    assert table.provenance["transform"] == "log2p1"
    assert table.values.min() >= 0


def test_orientation_by_id_header_by_shape_and_forced(tmp_path):
    # mixOmics' 220 x 200 table has more samples than genes: its id header, not its shape, says rows.
    t, notes = read_expression(ROOT / "data" / "mixomics_breast_tcga" / "mrna_all.csv")
    assert t.values.shape == (220, 200) and "the id column is called 'participant_code'" in notes[0]
    t2, _ = read_expression(MIXOMICS / "data_train_mrna.csv", samples_as="columns")
    assert t2.values.shape == (200, 150)
    genes_as_rows = tmp_path / "g.csv"
    genes_as_rows.write_text("gene_symbol,S1,S2,S3\nTP53,1,2,3\nESR1,4,5,6\n")
    t3, notes = read_expression(genes_as_rows)
    assert t3.sample_ids == ["S1", "S2", "S3"] and "the id column is called 'gene_symbol'" in notes[0]
    plain = tmp_path / "p.csv"
    plain.write_text("id,S1,S2,S3\nTP53,1,2,3\nESR1,4,5,6\n")
    t4, notes = read_expression(plain)
    assert t4.sample_ids == ["TP53", "ESR1"] and "fewer samples than genes" in notes[0]


def test_gzip_and_tsv(tmp_path):
    text = "gene\tTCGA-AA-0001-01A\tTCGA-AA-0002-01A\nTP53\t1.5\t2\nENSG00000141510.16\t3\t4\n"
    path = tmp_path / "t.tsv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    t, notes = read_expression(path)
    assert t.sample_ids == ["TCGA-AA-0001-01A", "TCGA-AA-0002-01A"]
    assert t.gene_ids == ["TP53", "ENSG00000141510"]
    assert any("Ensembl version" in n for n in notes)


@pytest.mark.parametrize("body, message", [
    ("id,G1,G1\nS1,1,2\n", r"duplicate gene id 'G1' in columns 2 and 3"),
    ("id,ENSG00000141510.1,ENSG00000141510.2\nS1,1,2\n",
     r"duplicate gene id 'ENSG00000141510.1' and 'ENSG00000141510.2' \(the same id once Ensembl versions"),
    ("id,G1,G2\nS1,1,\n", r"empty or NaN cell at row 2 \('S1'\), column 3 \('G2'\)"),
    ("id,G1,G2\nS1,1,2\nS2,NaN,2\n", r"empty or NaN cell at row 3 \('S2'\), column 2 \('G1'\)"),
    ("id,G1,G2\nS1,1,2\nS2,3,abc\n", r"non-numeric cell 'abc' at row 3 \('S2'\), column 3 \('G2'\)"),
    ("id,G1,G2\nS1,a,b\nS2,c,d\n", r"no numeric columns"),
    ("id,G1,G2\nS1,1,2\nS1,3,4\n", r"duplicate sample id 'S1' in rows 2 and 3"),
    ("id,G1\nS1,1,2\n", r"line 2 has 3 fields, the header has 2"),
    ("", r"the file is empty"),
])
def test_bad_gene_tables_name_the_problem_and_leave_the_store_unchanged(tmp_path, store_path, body, message):
    good = tmp_path / "good.csv"
    good.write_text("id,G1,G2\nS1,1,2\nS2,3,4\n")
    bad = tmp_path / "bad.csv"
    bad.write_text(body)
    with featstore.open(store_path, "a") as s:
        import_genes(s, good, "expression")
        before = s.read_expression().values.copy()
        with pytest.raises(InputError, match=message) as info:
            import_genes(s, bad, "expression", overwrite=True)
        assert "bad.csv" in str(info.value)
        assert s.tables() == ["expression"]
        assert (s.read_expression().values == before).all()
        assert s.validate() == []


def test_label_tables(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("patient_id,label\nTCGA-AA-0001-01A-11R,BRCA.LumA\nTCGA-AA-0001-11A-11R,Normal\n"
                    "TCGA-AA-0002,Basal\nTCGA-AA-0003,Normal\nTCGA-AA-0004,her2\nTCGA-AA-0005,\n")
    t, notes = read_labels(path)
    assert t.patient_ids == ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0004"]
    assert t.labels == ["Luminal", "Basal_Her2", "Basal_Her2"]
    assert t.raw_labels == ["LumA", "Basal", "Her2"]
    assert t.provenance["excluded"] == {"missing": 1, "Normal": 1, "normal_or_control_sample": 1}
    assert t.provenance["positive_class"] == "Basal_Her2"


def test_labels_in_every_spelling_users_have_and_an_empty_id_is_a_skipped_row(tmp_path):
    spellings = {"BRCA_LumA": "LumA", "Luminal A": "LumA", "LumA": "LumA", "Luminal B": "LumB", "BRCA.LumB": "LumB",
                 "Basal-like": "Basal", "BRCA_Basal": "Basal", "HER2-enriched": "Her2", "Her2": "Her2",
                 "HER2E": "Her2", "Normal-like": "Normal"}
    path = tmp_path / "l.csv"
    path.write_text("patient_id,label\n" + "".join(f"P{i},{raw}\n" for i, raw in enumerate(spellings))
                    + ",LumA\n")
    t, notes = read_labels(path)
    expected = {f"P{i}": call for i, call in enumerate(spellings.values()) if call != "Normal"}
    assert dict(zip(t.patient_ids, t.raw_labels)) == expected
    assert t.provenance["excluded"] == {"Normal": 1}
    assert any("WARNING: 1 rows with an empty 'patient_id' skipped (rows 13)" in n for n in notes)


def test_unknown_labels_are_listed_with_counts_and_pam50_keeps_the_five_calls(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("patient_id,label\nP1,LumA\nP2,Claudin-low\nP3,Claudin-low\nP4,??\nP5,Basal\n")
    with pytest.raises(InputError, match=r"does not know, with their counts: \{'Claudin-low': 2, '\?\?': 1\}"):
        read_labels(path)
    with pytest.raises(InputError, match=r"label map 'pam50' does not know.*'Claudin-low': 2"):
        read_labels(path, label_map="pam50")
    # The real Pan-Gyn patient table: every PAM50 call kept, in the five canonical names.
    table, _ = read_labels(PAM50_LABELS / "brca_subtype_patient_table.csv", id_column="patient_barcode",
                           label_column="BRCA_Subtype_PAM50", label_map="pam50")
    assert set(table.labels) == {"LumA", "LumB", "Her2", "Basal", "Normal"}


@pytest.mark.parametrize("body, kwargs, message", [
    ("patient_id,label\nP1,LumA\nP2,Luminal-ish\n", {}, r"column 'label' has values .* \{'Luminal-ish': 1\}"),
    ("patient,label\nP1,LumA\n", {}, r"no column 'patient_id'"),
    ("patient_id,label\nTCGA-AA-0001-01A,LumA\nTCGA-AA-0001-01B,Basal\n", {}, r"conflicting labels"),
    ("patient_id,label\nP1,Normal\n", {}, r"no usable labels"),
    ("patient_id,label\nP1,LumA\n", {"label_map": "nope"}, r"unknown --label-map 'nope'"),
])
def test_bad_label_tables(tmp_path, store_path, body, kwargs, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(body)
    with featstore.open(store_path, "a") as s:
        with pytest.raises(InputError, match=message):
            import_labels(s, bad, "labels", **kwargs)
        assert s.tables() == []


def test_patient_table_labels_agree_with_pancan():
    pancan, _ = read_labels(PAM50_LABELS / "pancan2018_brca_subtypes.csv", id_column="aliquot_barcode",
                            label_column="Subtype_mRNA", label_map=None)
    patient, _ = read_labels(PAM50_LABELS / "brca_subtype_patient_table.csv", id_column="patient_barcode",
                             label_column="BRCA_Subtype_PAM50", label_map=None)
    a, b = dict(zip(pancan.patient_ids, pancan.labels)), dict(zip(patient.patient_ids, patient.labels))
    common = set(a) & set(b)
    assert len(common) > 1000
    assert all(a[p] == b[p] for p in common)
