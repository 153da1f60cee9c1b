# Python readers the tests check our files against: TensorBoard's own event reader
# (tests/tensorboard.rs).
python3 -m pip install --quiet --disable-pip-version-check "tensorboard>=2.16"
