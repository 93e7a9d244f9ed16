package ratelimit

import "time"

// monthOf returns the UTC calendar month of t as "2006-01" and the time the
// next month starts, when the monthly quotas reset.
func monthOf(t time.Time) (string, time.Time) {
	u := t.UTC()
	start := time.Date(u.Year(), u.Month(), 1, 0, 0, 0, 0, time.UTC)
	return start.Format("2006-01"), start.AddDate(0, 1, 0)
}

// monthEndOf returns the time the month named name, "2006-01", ends. A
// name that does not parse ends at the zero time.
func monthEndOf(name string) time.Time {
	start, err := time.Parse("2006-01", name)
	if err != nil {
		return time.Time{}
	}
	return start.AddDate(0, 1, 0)
}
