from hypothesis import given
from hypothesis import strategies as st

from featstore.barcodes import parse_barcode, patient_of, site_of, strip_ensembl_version

alnum = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1)


@given(site=alnum.map(lambda s: (s * 2)[:2]), part=alnum.map(lambda s: (s * 4)[:4]),
       sample=st.integers(0, 99), vial=st.sampled_from("ABCD"), rest=st.sampled_from(["", "-13R-A12P-07", "-01D"]))
def test_barcode_parts_round_trip(site, part, sample, vial, rest):
    text = f"TCGA-{site}-{part}-{sample:02d}{vial}{rest}"
    bc = parse_barcode(text)
    assert bc is not None
    assert bc.patient == f"TCGA-{site}-{part}"
    assert bc.site == site
    assert bc.sample_type == f"{sample:02d}"
    assert patient_of(text) == bc.patient
    assert patient_of(bc.patient) == bc.patient
    assert site_of(bc.patient) == site


@given(st.text(max_size=30))
def test_non_barcodes_pass_through(text):
    if parse_barcode(text) is None:
        assert patient_of(text) == text.strip()
        assert site_of(text) is None


def test_real_barcodes():
    bc = parse_barcode("TCGA-A7-A13D-01A-13R-A12P-07")
    assert (bc.patient, bc.site, bc.sample_type, bc.is_primary_tumour) == ("TCGA-A7-A13D", "A7", "01", True)
    assert parse_barcode("TCGA-BH-A0DK-11A-13R-A089-07").sample_type == "11"
    assert parse_barcode("tcga-bh-a0dk").patient == "TCGA-BH-A0DK"


@given(st.from_regex(r"ENSG\d{11}", fullmatch=True), st.integers(1, 99))
def test_ensembl_versions_stripped(gene, version):
    assert strip_ensembl_version(f"{gene}.{version}") == gene
    assert strip_ensembl_version(gene) == gene
    assert strip_ensembl_version(f"{gene}.{version}_PAR_Y") == f"{gene}_PAR_Y"
