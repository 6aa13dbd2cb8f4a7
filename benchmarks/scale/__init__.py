"""The full-size rehearsal behind ``benchmarks/scale.py`` (see docs/scale.md).

``text`` and ``write`` generate the official datasets and corpora at full size, ``timer`` is the
callback that times the phases inside each ``mlr-bench`` subprocess, ``runs`` plans and runs the
method x dataset x stage cells, ``report`` turns the measurements into the tables and the RN50
extrapolations.
"""

#: The official datasets the rehearsal writes and the methods it runs (stdlib only here, so
#: that ``scale.py`` refuses bad input before importing torch).
DATASETS = ("voc2007", "coco2014", "nuswide")
METHODS = ("zeroshot", "taidpt", "comc", "pvp", "t2ipal")
#: The phase timer as the subprocesses import it (``benchmarks`` is on their PYTHONPATH).
TIMER_CLASS_PATH = "scale.timer.PhaseTimer"
TIMER_ENV_OUT = "SCALE_TIMER_OUT"
TIMER_ENV_T0 = "SCALE_T0"
