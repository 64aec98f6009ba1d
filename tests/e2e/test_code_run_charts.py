"""code_run chart artifacts: matplotlib figures in python code come back in
`ExecuteResponse.artifacts.charts` through the real SDK, and their marker lines leave `result`."""

import asyncio
import base64
import os

import pytest
from daytona import AsyncDaytona, CodeRunParams, DaytonaConfig
from daytona.common.charts import BarChart, ChartType, LineChart, ScatterChart

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sb(daytona):
    s = daytona.create()
    probe = s.process.code_run("import matplotlib\nprint(matplotlib.__version__)")
    if probe.exit_code != 0:
        message = f"matplotlib is not installed in the sandbox: {probe.result}"
        if os.environ.get("CORRAL_E2E_STRICT"):
            daytona.delete(s)
            pytest.fail(message)
        daytona.delete(s)
        pytest.skip(message)
    yield s
    daytona.delete(s)


def assert_png(chart):
    assert chart.png, "chart without png"
    assert base64.b64decode(chart.png).startswith(PNG_MAGIC)


def test_line_chart(sb):
    code = """
import matplotlib.pyplot as plt
print("before")
plt.plot([0, 1, 2], [0, 1, 4], label="squares")
plt.plot([0, 1, 2], [1, 2, 3], label="plus one")
plt.title("Growth")
plt.xlabel("x axis")
plt.ylabel("y axis")
plt.legend()
plt.show()
print("after")
"""
    r = sb.process.code_run(code)
    assert r.exit_code == 0, r.result
    assert r.result == "before\nafter\n"
    assert r.artifacts.stdout == r.result
    assert len(r.artifacts.charts) == 1
    chart = r.artifacts.charts[0]
    assert isinstance(chart, LineChart)
    assert chart.type == ChartType.LINE
    assert chart.title == "Growth"
    assert chart.x_label == "x axis"
    assert chart.y_label == "y axis"
    assert chart.x_scale == "linear" and chart.y_scale == "linear"
    assert chart.x_ticks and len(chart.x_ticks) == len(chart.x_tick_labels)
    assert all(0 <= t <= 2 for t in chart.x_ticks)
    lines = {e.label: e.points for e in chart.elements}
    assert lines == {"squares": [[0, 0], [1, 1], [2, 4]], "plus one": [[0, 1], [1, 2], [2, 3]]}
    assert_png(chart)


def test_bar_chart(sb):
    code = """
import matplotlib.pyplot as plt
plt.bar(["apples", "pears", "plums"], [3, 1.5, 7], label="fruit")
plt.title("Stock")
plt.ylabel("kg")
plt.show()
"""
    r = sb.process.code_run(code)
    assert r.exit_code == 0, r.result
    assert r.result == ""
    [chart] = r.artifacts.charts
    assert isinstance(chart, BarChart)
    assert chart.type == ChartType.BAR
    assert chart.title == "Stock"
    assert chart.y_label == "kg"
    assert [(e.label, e.value, e.group) for e in chart.elements] == [
        ("apples", "3", "fruit"),
        ("pears", "1.5", "fruit"),
        ("plums", "7", "fruit"),
    ]
    assert_png(chart)


def test_scatter_chart(sb):
    code = """
import matplotlib.pyplot as plt
plt.scatter([1, 2, 3], [9, 8, 7], label="dots")
plt.xlabel("n")
plt.show()
"""
    r = sb.process.code_run(code)
    assert r.exit_code == 0, r.result
    [chart] = r.artifacts.charts
    assert isinstance(chart, ScatterChart)
    assert chart.type == ChartType.SCATTER
    assert chart.x_label == "n"
    assert [(e.label, e.points) for e in chart.elements] == [("dots", [[1, 9], [2, 8], [3, 7]])]
    assert_png(chart)


def test_pie_and_box_charts(sb):
    code = """
import matplotlib.pyplot as plt
plt.pie([1, 3], labels=["small", "big"])
plt.show()
plt.boxplot([[1, 2, 3, 4, 5, 40]], labels=["data"])
plt.show()
"""
    r = sb.process.code_run(code)
    assert r.exit_code == 0, r.result
    pie, box = r.artifacts.charts
    assert pie.type == ChartType.PIE
    assert [(e.label, e.angle) for e in pie.elements] == [("small", 90), ("big", 270)]
    assert box.type == ChartType.BOX_AND_WHISKER
    [element] = box.elements
    assert element.label == "data"
    assert (element.min, element.median, element.max) == (1, 3.5, 5)
    assert element.outliers == [40]


def test_figure_without_show_is_reported(sb):
    code = """
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.plot([5, 6], [7, 8])
ax.set_title("never shown")
print("done")
"""
    r = sb.process.code_run(code)
    assert r.exit_code == 0, r.result
    assert r.result == "done\n"
    [chart] = r.artifacts.charts
    assert chart.title == "never shown"
    assert chart.elements[0].points == [[5, 7], [6, 8]]
    assert_png(chart)


def test_two_figures_give_two_charts(sb):
    code = """
import matplotlib.pyplot as plt
print("a", end="")
plt.figure(); plt.plot([1, 2]); plt.title("first"); plt.show()
print("b")
plt.figure(); plt.bar([1, 2], [3, 4]); plt.title("second")
print("c")
"""
    r = sb.process.code_run(code)
    assert r.exit_code == 0, r.result
    # A chart written after an unfinished line leaves that line whole.
    assert r.result == "ab\nc\n"
    assert [(c.type, c.title) for c in r.artifacts.charts] == [("line", "first"), ("bar", "second")]
    for chart in r.artifacts.charts:
        assert_png(chart)


def test_charts_survive_an_error_and_argv(sb):
    code = """
import sys
import matplotlib.pyplot as plt
plt.plot([1, 2], [3, 4])
print(sys.argv[1:])
raise ValueError("boom")
"""
    r = sb.process.code_run(code, params=CodeRunParams(argv=["x", "y"]))
    assert r.exit_code == 1
    assert r.result.startswith("['x', 'y']\nTraceback (most recent call last):\n"), r.result
    assert 'File "<stdin>", line 6, in <module>' in r.result
    assert r.result.endswith("ValueError: boom\n")
    assert [c.type for c in r.artifacts.charts] == ["line"]


def test_per_call_python_reports_charts_too(sb):
    # A start-up variable sends the run to a fresh python3 instead of the fork server.
    code = """
import matplotlib.pyplot as plt
plt.plot([1, 2], [2, 1]); plt.title("cold"); plt.show()
print("cold run")
"""
    r = sb.process.code_run(code, params=CodeRunParams(env={"PYTHONDONTWRITEBYTECODE": "1"}))
    assert r.exit_code == 0, r.result
    assert r.result == "cold run\n"
    assert [(c.type, c.title) for c in r.artifacts.charts] == [("line", "cold")]
    assert_png(r.artifacts.charts[0])


def test_code_without_matplotlib_has_no_charts(sb):
    r = sb.process.code_run("import sys\nprint('plain', 'matplotlib.pyplot' in sys.modules)")
    assert r.exit_code == 0
    assert r.result == "plain False\n"
    assert not r.artifacts.charts


def test_async_client(server, sb):
    async def main():
        config = DaytonaConfig(api_url=f"{server.url}/api", api_key=server.key)
        async with AsyncDaytona(config) as client:
            asb = await client.get(sb.id)
            return await asb.process.code_run(
                "import matplotlib.pyplot as plt\nplt.plot([1, 2], [1, 2])\nplt.title('async')\nplt.show()\nprint('ok')"
            )

    r = asyncio.run(main())
    assert r.exit_code == 0, r.result
    assert r.result == "ok\n"
    [chart] = r.artifacts.charts
    assert isinstance(chart, LineChart)
    assert chart.title == "async"
    assert chart.elements[0].points == [[1, 1], [2, 2]]
    assert_png(chart)
