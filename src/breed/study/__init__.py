"""Studies (paper Section 4.1, Table 1): grids of runs (``grid``), the tidy tables read from
their run directories (``tables``) and the paper's figures (``figures``). The names below are
the package's API, used by the Snakemake workflow."""

from breed.study.grid import *  # noqa: F403
from breed.study.grid import __all__ as _grid
from breed.study.tables import *  # noqa: F403
from breed.study.tables import __all__ as _tables

__all__ = [*_grid, *_tables]
