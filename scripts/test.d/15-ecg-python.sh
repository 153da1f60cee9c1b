# The independent WFDB reader the ECG reader is checked against (crates/ecg/tests/wfdb_python.rs):
# python wfdb writes and reads the test records. Same version as bench/requirements.txt.
python3 -m pip install --quiet --disable-pip-version-check "wfdb==4.3.1"
