package report

import (
	"strings"
	"testing"
	"time"
)

func TestMarkdownRendersTablesAndGoals(t *testing.T) {
	d := &Document{
		Title:   "Benchmarks",
		Date:    time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC),
		Command: "make bench",
		Goals:   []Goal{{Name: "throughput", Target: "at least nginx's", Measured: "0.5", Met: false}},
		Sections: []Section{{
			Title: "Scenario",
			Tables: []Table{{
				Title:  "Phase",
				Header: []string{"target", "requests/s"},
				Rows:   [][]string{{"direct", "100"}},
				Note:   "A note.",
			}},
		}},
	}
	md := d.Markdown()
	for _, want := range []string{
		"# Benchmarks\n",
		"Date: 2026-01-02 03:04 UTC. Command: `make bench`.",
		"| throughput | at least nginx's | 0.5 | no |",
		"## Scenario",
		"### Phase",
		"| target | requests/s |\n| --- | --: |\n| direct | 100 |",
		"A note.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestFormatters(t *testing.T) {
	tests := []struct{ got, want string }{
		{Millis(1500 * time.Microsecond), "1.500"},
		{SignedMillis(-250 * time.Microsecond), "-0.250"},
		{SignedMillis(250 * time.Microsecond), "+0.250"},
		{Ratio(1, 4), "0.25"},
		{Ratio(1, 0), "n/a"},
		{MB(27_400_000), "27.4"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
