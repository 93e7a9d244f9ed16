package deploy_test

import (
	"encoding/json"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/llmproxy/llmproxy/metrics"
)

// metricName matches a metric of llmproxy in a PromQL expression.
var metricName = regexp.MustCompile(`\bllmproxy_[a-zA-Z0-9_]+`)

// fqName extracts the name from a Desc's String, the only place
// client_golang exposes it.
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// exportedNames returns every series name that metrics.New registers: the
// names of counters and gauges, and the _bucket, _sum and _count series of
// histograms.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	m := reflect.ValueOf(metrics.New()).Elem()
	names := map[string]bool{}
	collectors := 0
	for i := range m.NumField() {
		if !m.Type().Field(i).IsExported() {
			continue // caches of the exported vectors, no metrics of their own
		}
		c, ok := m.Field(i).Interface().(prometheus.Collector)
		if !ok || m.Type().Field(i).Name == "Registry" {
			continue
		}
		collectors++
		_, histogram := c.(*prometheus.HistogramVec)
		if _, plain := c.(prometheus.Histogram); plain {
			histogram = true
		}
		for _, name := range describedNames(t, c) {
			if !histogram {
				names[name] = true
				continue
			}
			// A classic histogram has no series under its bare name.
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				names[name+suffix] = true
			}
		}
	}
	if collectors < 20 || !names["llmproxy_requests_total"] ||
		!names["llmproxy_queue_wait_seconds_bucket"] {
		t.Fatalf("found %d collectors in metrics.Metrics (names %v), want at least 20 with "+
			"llmproxy_requests_total and llmproxy_queue_wait_seconds_bucket", collectors, names)
	}
	return names
}

func describedNames(t *testing.T, c prometheus.Collector) []string {
	t.Helper()
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	var out []string
	for d := range ch {
		match := fqName.FindStringSubmatch(d.String())
		if match == nil {
			t.Fatalf("no fqName in descriptor %s", d)
		}
		out = append(out, match[1])
	}
	return out
}

// dashboardQueries returns every PromQL expression and variable query of
// the dashboard: the strings under the keys expr, query and definition.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	var doc any
	if err := json.Unmarshal(readFile(t, "grafana-dashboard.json"), &doc); err != nil {
		t.Fatalf("parse grafana-dashboard.json: %v", err)
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for key, child := range v {
				if s, ok := child.(string); ok && slices.Contains([]string{"expr", "query", "definition"}, key) {
					out = append(out, s)
					continue
				}
				walk(child)
			}
		case []any:
			for _, child := range v {
				walk(child)
			}
		}
	}
	walk(doc)
	return out
}

// alertTexts returns the expression and annotations of every alert rule.
func alertTexts(t *testing.T) []string {
	t.Helper()
	var file ruleFile
	if err := yaml.Unmarshal(readFile(t, "prometheus-alerts.yml"), &file); err != nil {
		t.Fatalf("parse prometheus-alerts.yml: %v", err)
	}
	var out []string
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			out = append(out, r.Expr)
			for _, text := range r.Annotations {
				out = append(out, text)
			}
		}
	}
	return out
}

func TestFilesNameExportedMetrics(t *testing.T) {
	exported := exportedNames(t)
	files := map[string][]string{
		"grafana-dashboard.json": dashboardQueries(t),
		"prometheus-alerts.yml":  alertTexts(t),
	}
	for file, texts := range files {
		t.Run(file, func(t *testing.T) {
			used := map[string]bool{}
			for _, text := range texts {
				for _, name := range metricName.FindAllString(text, -1) {
					used[name] = true
				}
			}
			if len(used) == 0 {
				t.Fatal("names no llmproxy metric, so the check is empty")
			}
			var unknown []string
			for name := range used {
				if !exported[name] {
					unknown = append(unknown, name)
				}
			}
			sort.Strings(unknown)
			for _, name := range unknown {
				t.Errorf("%s is not exported by metrics.New", name)
			}
		})
	}
}
