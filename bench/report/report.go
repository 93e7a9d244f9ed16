// Package report renders the results of a benchmark run as a Markdown
// document: the machine, the goals and whether the run met them, and one
// section of tables per scenario.
package report

import (
	"fmt"
	"strings"
	"time"
)

// Table is one Markdown table with an optional heading and note.
type Table struct {
	Title  string
	Header []string
	Rows   [][]string
	// Note is printed under the table.
	Note string
}

// Section is the report of one scenario.
type Section struct {
	Title string
	// Intro is printed before the tables: what was measured, and how.
	Intro  string
	Tables []Table
}

// Goal is a target a result is checked against.
type Goal struct {
	Name     string
	Target   string
	Measured string
	Met      bool
}

// Document is a whole report.
type Document struct {
	Title string
	// Preface is printed under the title.
	Preface  string
	Date     time.Time
	Command  string
	Machine  Machine
	Goals    []Goal
	Sections []Section
	// Method is printed last: how numbers are measured and their limits.
	Method string
}

// Markdown renders d.
func (d *Document) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\n", d.Title)
	if d.Preface != "" {
		fmt.Fprintf(&b, "%s\n\n", strings.TrimSpace(d.Preface))
	}
	date := d.Date.UTC().Format("2006-01-02 15:04 MST")
	fmt.Fprintf(&b, "Date: %s. Command: `%s`.\n\n", date, d.Command)
	b.WriteString(d.Machine.Markdown())
	if len(d.Goals) > 0 {
		b.WriteString("\n## Goals\n\n")
		writeTable(&b, goalTable(d.Goals))
	}
	for _, s := range d.Sections {
		fmt.Fprintf(&b, "\n## %s\n\n", s.Title)
		if s.Intro != "" {
			fmt.Fprintf(&b, "%s\n", strings.TrimSpace(s.Intro)+"\n")
		}
		for _, t := range s.Tables {
			writeTable(&b, t)
		}
	}
	if d.Method != "" {
		fmt.Fprintf(&b, "\n## Method and limits\n\n%s\n", strings.TrimSpace(d.Method))
	}
	return b.String()
}

func goalTable(goals []Goal) Table {
	t := Table{Header: []string{"goal", "target", "measured", "met"}}
	for _, g := range goals {
		met := "no"
		if g.Met {
			met = "yes"
		}
		t.Rows = append(t.Rows, []string{g.Name, g.Target, g.Measured, met})
	}
	return t
}

func writeTable(b *strings.Builder, t Table) {
	if t.Title != "" {
		fmt.Fprintf(b, "### %s\n\n", t.Title)
	}
	writeRow(b, t.Header)
	sep := make([]string, len(t.Header))
	for i := range sep {
		sep[i] = "---"
		if i > 0 {
			sep[i] = "--:"
		}
	}
	writeRow(b, sep)
	for _, r := range t.Rows {
		writeRow(b, r)
	}
	b.WriteString("\n")
	if t.Note != "" {
		fmt.Fprintf(b, "%s\n\n", strings.TrimSpace(t.Note))
	}
}

func writeRow(b *strings.Builder, cells []string) {
	b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
}
