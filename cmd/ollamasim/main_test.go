package main

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseFlagsBuildsConfig(t *testing.T) {
	opts, err := parseFlags([]string{
		"-addr", "127.0.0.1:0",
		"-models", "llama3:8b=4.7,nomic-embed-text",
		"-registry", "phi3",
		"-parallel", "2",
		"-load-time", "10ms",
		"-error-rate", "0.5",
		"-cut-after", "3",
	}, io.Discard)
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	cfg := opts.cfg
	if len(cfg.Models) != 2 || !cfg.Models[1].Embedding {
		t.Errorf("models = %+v, want two with the second an embedding model", cfg.Models)
	}
	if _, ok := cfg.Registry["phi3"]; !ok || len(cfg.Registry) != 1 {
		t.Errorf("registry = %v, want only phi3", cfg.Registry)
	}
	if cfg.Parallel != 2 || cfg.LoadTime != 10*time.Millisecond {
		t.Errorf("parallel %d, load time %v", cfg.Parallel, cfg.LoadTime)
	}
	if cfg.Faults.ErrorRate != 0.5 || cfg.Faults.CutAfterChunks != 3 {
		t.Errorf("faults = %+v", cfg.Faults)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestParseFlagsRejectsBadInput(t *testing.T) {
	tests := [][]string{
		{"-models", "llama3=huge"},
		{"-registry", "x=-1"},
		{"extra"},
		{"-parallel", "many"},
	}
	for _, args := range tests {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			if _, err := parseFlags(args, io.Discard); err == nil {
				t.Error("parseFlags succeeded")
			}
		})
	}
}

func TestHelpListsFlags(t *testing.T) {
	var out strings.Builder
	_, err := parseFlags([]string{"-help"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("parseFlags(-help) error = %v, want flag.ErrHelp", err)
	}
	for _, name := range []string{"-addr", "-models", "-refuse", "-control-addr", "embed"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("help does not mention %s", name)
		}
	}
}

func TestRunRejectsInvalidConfig(t *testing.T) {
	err := run([]string{"-addr", "127.0.0.1:0", "-error-rate", "2"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "error rate") {
		t.Errorf("run error = %v, want the invalid error rate reported", err)
	}
}
