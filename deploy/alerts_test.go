package deploy_test

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// ruleFile is the layout of a Prometheus rule file, with the fields that
// alerting rules use.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

var alertName = regexp.MustCompile(`^Llmproxy[A-Z][A-Za-z0-9]+$`)

func TestAlertRulesStructure(t *testing.T) {
	dec := yaml.NewDecoder(bytes.NewReader(readFile(t, "prometheus-alerts.yml")))
	dec.KnownFields(true) // a misspelled key would otherwise be dropped silently
	var file ruleFile
	if err := dec.Decode(&file); err != nil {
		t.Fatalf("parse prometheus-alerts.yml: %v", err)
	}
	if len(file.Groups) == 0 {
		t.Fatal("no rule groups")
	}

	seen := map[string]bool{}
	for _, g := range file.Groups {
		if g.Name == "" {
			t.Error("a group has no name")
		}
		if len(g.Rules) == 0 {
			t.Errorf("group %q has no rules", g.Name)
		}
		for _, r := range g.Rules {
			if !alertName.MatchString(r.Alert) {
				t.Errorf("alert %q: want a CamelCase name starting with Llmproxy", r.Alert)
			}
			if r.Record != "" {
				t.Errorf("alert %q: recording rules belong in another file", r.Alert)
			}
			if seen[r.Alert] {
				t.Errorf("alert %q defined twice", r.Alert)
			}
			seen[r.Alert] = true
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("alert %q has no expr", r.Alert)
			}
			// Every for value in this file uses units (s, m, h) that
			// time.ParseDuration shares with Prometheus.
			if d, err := time.ParseDuration(r.For); err != nil || d <= 0 {
				t.Errorf("alert %q: for %q, want a positive duration", r.Alert, r.For)
			}
			switch r.Labels["severity"] {
			case "critical", "warning", "info":
			default:
				t.Errorf("alert %q: severity %q, want critical, warning or info",
					r.Alert, r.Labels["severity"])
			}
			for _, key := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[key]) == "" {
					t.Errorf("alert %q has no %s annotation", r.Alert, key)
				}
			}
		}
	}

	// The alerts that README.md lists.
	for _, want := range []string{
		"LlmproxyNodeDown", "LlmproxyBreakerOpen", "LlmproxyQueueWaitHigh",
		"LlmproxyHighErrorRatio", "LlmproxyCacheHitRatioDrop",
	} {
		if !seen[want] {
			t.Errorf("alert %s missing", want)
		}
	}
}

func TestAlertRulesPromtoolCheck(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	out := run(t, promtool, "check", "rules", "prometheus-alerts.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool check rules printed no SUCCESS:\n%s", out)
	}
}

// prometheus-alerts.test.yml feeds series to the rules and lists the
// alerts each must fire, and those that must stay silent.
func TestAlertRulesPromtoolUnitTests(t *testing.T) {
	promtool := tool(t, "promtool", "prometheus")
	out := run(t, promtool, "test", "rules", "prometheus-alerts.test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules printed no SUCCESS:\n%s", out)
	}
}
