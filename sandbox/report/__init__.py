"""The monthly report a FinTech Lab participant sends the regulator: ``cryptocity sandbox report``.

``period`` is the month and its bounds in the pilot's time zone; ``data`` reads the month through the
regulator API's own functions; ``tables`` turns it into the tables that become CSV files and HTML tables;
``charts`` holds generic chart helpers (matplotlib, PNG bytes) that other reports reuse, and ``figures``
the month's charts drawn with them; ``html`` renders ``templates/report.html``; ``bundle`` writes the
folder with its ``manifest.json``; ``cli`` is the command. What every file and figure means:
docs/sandbox-report.md.

Only the light modules are imported here: ``charts``, ``figures``, ``html`` and ``bundle`` load
matplotlib, so import them by name where a report is drawn.
"""

from sandbox.report.period import BadMonth, ReportPeriod, month_argument, parse_month

__all__ = ["BadMonth", "ReportPeriod", "month_argument", "parse_month"]
