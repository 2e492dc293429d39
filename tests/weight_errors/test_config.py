"""harness.weight_errors.config: bad values name the field; the sources are checked against the one list of them
(harness.weight_errors.sources.SOURCES)."""

import pytest

from harness.weight_errors.config import ErrorsConfig
from harness.weight_errors.run import errors_config
from harness.weight_errors.sources import SOURCES
from tests.weight_errors.conftest import _compose


def test_the_config_takes_its_sources_from_the_one_list():
    # the default is every source, in the list's order (the order of the tables and figures)
    assert ErrorsConfig().sources == list(SOURCES)
    # an unknown name is refused naming it, and the accepted names listed are exactly the list's
    with pytest.raises(ValueError) as err:
        ErrorsConfig(sources=["normal", "gaussian_mixture"])
    message = str(err.value)
    assert "unknown ['gaussian_mixture']" in message and "'normal'" not in message.split(";")[0]
    assert message.endswith(f"; accepted sources: {list(SOURCES)}")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="synthetic_cols"):
        ErrorsConfig(numel=5000)
    with pytest.raises(ValueError, match="student_t_df"):
        ErrorsConfig(student_t_df=2.0)
    with pytest.raises(ValueError, match="quantizers is empty"):
        errors_config(_compose("~quantizers"))
