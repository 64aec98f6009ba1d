# corral-agent's chart capture for python code-run. It runs in a namespace of its own: in the
# fork server once at start-up (pyfork.py puts FINDER first on each child's sys.meta_path), or in
# a per-call `python3 -c` whose last line calls run_stdin().
#
# Nothing happens until the code imports matplotlib: FINDER answers only for "matplotlib" (it
# selects the Agg backend, as nothing can be displayed) and "matplotlib.pyplot" (it wraps the
# loader so that, once pyplot has loaded, `pyplot.show` is replaced and the figures still open
# at exit are reported too). Each figure shown becomes one line on fd 1:
#     MARKER + {"type": "chart", "value": <chart>} + "\n"
# which the agent removes from the output and returns in `artifacts.charts`. <chart> has the
# keys of Daytona's Chart (type line/scatter/bar/pie/box_and_whisker/composite_chart/unknown,
# title, png (base64), x_label, y_label, x_ticks, x_tick_labels, x_scale, y_..., elements).
import sys
import os

MARKER = "corral_chart_5e1d7b:"


def _spec_from_others(me, name, path, target):
    for finder in sys.meta_path:
        if finder is me:
            continue
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        spec = find(name, path, target)
        if spec is not None:
            return spec
    return None


class _Finder:
    """Answers only for matplotlib and its pyplot; everything else goes to the next finder."""

    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib":
            os.environ["MPLBACKEND"] = "Agg"
            return None
        if name != "matplotlib.pyplot":
            return None
        spec = _spec_from_others(self, name, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PyplotLoader(spec.loader)
        return spec

    def invalidate_caches(self):
        pass


class _PyplotLoader:
    """pyplot's own loader, followed by the patch."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            _patch(module)
        except Exception:
            pass


FINDER = _Finder()


def _patch(plt):
    if getattr(plt.show, "_corral", False):
        return
    import atexit

    def show(*args, **kwargs):
        emit_open_figures(plt)

    show._corral = True
    show.__doc__ = plt.show.__doc__
    show.__wrapped__ = plt.show
    plt.show = show
    _record_boxplots()
    atexit.register(emit_open_figures, plt)


def _record_boxplots():
    """Boxplots keep no trace of their statistics; remember them on the axes."""
    from matplotlib.axes import Axes

    bxp = Axes.bxp

    def recording_bxp(self, bxpstats, *args, **kwargs):
        stats = list(bxpstats)
        drawn = bxp(self, stats, *args, **kwargs)
        self.__dict__.setdefault("_corral_boxes", []).append((stats, drawn))
        return drawn

    recording_bxp.__doc__ = bxp.__doc__
    recording_bxp.__wrapped__ = bxp
    Axes.bxp = recording_bxp


def emit_open_figures(plt):
    """Reports every open figure, then closes it."""
    helpers = sys.modules.get("matplotlib._pylab_helpers")
    if helpers is None:
        return
    for manager in list(helpers.Gcf.get_all_fig_managers()):
        figure = manager.canvas.figure
        try:
            _emit(_chart(figure))
        except Exception:
            pass
        try:
            plt.close(figure)
        except Exception:
            pass


def _emit(chart):
    import json

    line = MARKER + json.dumps({"type": "chart", "value": chart}, allow_nan=False) + "\n"
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    data = line.encode()
    while data:
        data = data[os.write(1, data):]


# ---- extraction -------------------------------------------------------------------------------


def _num(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return number


def _num_text(value):
    number = _num(value)
    if number is None:
        return None
    return str(int(number)) if number.is_integer() else repr(number)


def _label(artist):
    label = artist.get_label()
    if not isinstance(label, str) or label.startswith("_"):
        return ""
    return label


def _points(pairs):
    points = []
    for pair in pairs:
        x, y = _num(pair[0]), _num(pair[1])
        if x is not None and y is not None:
            points.append([x, y])
    return points


def _title(ax):
    for loc in ("center", "left", "right"):
        text = ax.get_title(loc)
        if text:
            return text
    return ""


def _suptitle(figure):
    text = getattr(figure, "_suptitle", None)
    return text.get_text() if text is not None else ""


def _chart(figure):
    import base64
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    try:
        axes = [
            ax
            for ax in figure.get_axes()
            if ax.get_visible() and ax.get_label() != "<colorbar>"
        ]
        if len(axes) == 1:
            chart = _axes_chart(axes[0])
        elif axes:
            chart = {
                "type": "composite_chart",
                "elements": [_axes_chart(ax) for ax in axes],
            }
        else:
            chart = {"type": "unknown", "elements": []}
    except Exception:
        chart = {"type": "unknown", "elements": []}
    if not chart.get("title"):
        chart["title"] = _suptitle(figure)
    chart["png"] = png
    return {key: value for key, value in chart.items() if value is not None}


def _axes_chart(ax):
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge

    boxes = ax.__dict__.get("_corral_boxes", [])
    box_lines = set()
    for _, drawn in boxes:
        for artists in drawn.values():
            box_lines.update(id(a) for a in artists)
    lines = [
        line for line in ax.get_lines() if id(line) not in box_lines and line.get_visible()
    ]
    scatters = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_visible()]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    chart = {"title": _title(ax)}
    if boxes:
        chart["type"] = "box_and_whisker"
        chart["elements"] = _box_elements(ax, boxes)
    elif bars:
        chart["type"] = "bar"
        chart["elements"] = _bar_elements(ax, bars)
    elif wedges and not lines and not scatters:
        chart["type"] = "pie"
        chart["elements"] = [
            {
                "label": _label(w),
                "angle": _num(w.theta2 - w.theta1),
                "radius": _num(w.r),
            }
            for w in wedges
        ]
        return chart
    elif lines or scatters:
        chart["type"] = "line" if lines else "scatter"
        chart["elements"] = [
            {"label": _label(line), "points": _points(line.get_xydata())} for line in lines
        ] + [{"label": _label(c), "points": _points(c.get_offsets())} for c in scatters]
        _add_axis(ax, chart, "x")
        _add_axis(ax, chart, "y")
    else:
        chart["type"] = "unknown"
        chart["elements"] = []
        return chart
    chart["x_label"] = ax.get_xlabel()
    chart["y_label"] = ax.get_ylabel()
    return chart


def _add_axis(ax, chart, which):
    axis = ax.xaxis if which == "x" else ax.yaxis
    low, high = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    slack = (high - low) * 1e-9
    locations = list(axis.get_majorticklocs())
    try:
        texts = list(axis.get_major_formatter().format_ticks(locations))
    except Exception:
        texts = [""] * len(locations)
    ticks, labels = [], []
    for location, text in zip(locations, texts):
        number = _num(location)
        if number is not None and low - slack <= number <= high + slack:
            ticks.append(number)
            labels.append(str(text))
    chart[which + "_ticks"] = ticks
    chart[which + "_tick_labels"] = labels
    chart[which + "_scale"] = axis.get_scale()


def _tick_text(axis, position):
    """The label of the major tick at `position` (a bar's centre), if any."""
    locations = list(axis.get_majorticklocs())
    try:
        texts = list(axis.get_major_formatter().format_ticks(locations))
    except Exception:
        return None
    for location, text in zip(locations, texts):
        if abs(location - position) < 1e-6 and text:
            return str(text)
    return None


def _bar_elements(ax, containers):
    elements = []
    for container in containers:
        horizontal = getattr(container, "orientation", None) == "horizontal"
        values = getattr(container, "datavalues", None)
        for index, patch in enumerate(container.patches):
            if horizontal:
                centre = patch.get_y() + patch.get_height() / 2
                size = patch.get_width()
                label = _tick_text(ax.yaxis, centre)
            else:
                centre = patch.get_x() + patch.get_width() / 2
                size = patch.get_height()
                label = _tick_text(ax.xaxis, centre)
            if values is not None and index < len(values):
                size = values[index]
            elements.append(
                {
                    "label": label if label is not None else _num_text(centre) or "",
                    "value": _num_text(size),
                    "group": _label(container),
                }
            )
    return elements


def _box_elements(ax, boxes):
    elements = []
    for stats, _ in boxes:
        for index, box in enumerate(stats):
            label = box.get("label")
            if label is None:
                label = _tick_text(ax.xaxis, index + 1) or str(index + 1)
            elements.append(
                {
                    "label": str(label),
                    "min": _num(box.get("whislo")),
                    "first_quartile": _num(box.get("q1")),
                    "median": _num(box.get("med")),
                    "third_quartile": _num(box.get("q3")),
                    "max": _num(box.get("whishi")),
                    "outliers": [
                        n for n in (_num(v) for v in box.get("fliers", [])) if n is not None
                    ],
                }
            )
    return elements


# ---- per-call runs ----------------------------------------------------------------------------


def run_stdin():
    """For `python3 -u -c <this file + run_stdin()> <argv..>` with the code on stdin: runs it as
    `python3 -u - <argv..>` would, with FINDER installed."""
    code = sys.stdin.buffer.read()
    sys.argv[0] = "-"
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = sys.orig_argv[:1] + ["-u", "-"] + sys.argv[1:]
    sys.meta_path.insert(0, FINDER)
    main = type(sys)("__main__")
    main.__dict__.update(
        {"__builtins__": sys.modules["builtins"], "__file__": "<stdin>", "__cached__": None}
    )
    sys.modules["__main__"] = main
    try:
        exec(compile(code, "<stdin>", "exec", dont_inherit=True), main.__dict__)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as error:
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<stdin>":
            tb = tb.tb_next
        error.__traceback__ = tb
        sys.excepthook(type(error), error, tb)
        sys.exit(1)
