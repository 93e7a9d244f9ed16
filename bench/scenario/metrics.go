package scenario

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// histogram is one series of a Prometheus histogram: cumulative bucket
// counts by upper bound, in ascending order of bound.
type histogram struct {
	bounds []float64
	counts []float64
	count  float64
}

// quantileBucket returns the bounds, in seconds, of the bucket that
// holds the q-quantile (0 < q <= 1): the bucket in which the cumulative
// count first reaches q times the total. ok is false for an empty
// histogram. upper is +Inf for the last bucket.
func (h histogram) quantileBucket(q float64) (lower, upper float64, ok bool) {
	if h.count == 0 {
		return 0, 0, false
	}
	rank := q * h.count
	for i, bound := range h.bounds {
		if h.counts[i] >= rank {
			return lower, bound, true
		}
		lower = bound
	}
	return lower, math.Inf(1), true
}

// readHistograms gets the Prometheus text exposition at url and returns
// the buckets of metric name (without _bucket) by the value of label.
func readHistograms(ctx context.Context, url, name, label string) (map[string]histogram, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("build metrics request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get metrics: status %d", resp.StatusCode)
	}

	out := map[string]histogram{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	prefix := name + "_bucket{"
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		labels, value, ok := strings.Cut(line[len(prefix):], "} ")
		if !ok {
			return nil, fmt.Errorf("parse metrics line %q: no closing brace", line)
		}
		key, le := labelValue(labels, label), labelValue(labels, "le")
		bound, err1 := strconv.ParseFloat(le, 64)
		count, err2 := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("parse metrics line %q: invalid bound or count", line)
		}
		h := out[key]
		h.bounds = append(h.bounds, bound)
		h.counts = append(h.counts, count)
		h.count = max(h.count, count)
		out[key] = h
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}

	for key, h := range out {
		if !slices.IsSorted(h.bounds) {
			return nil, fmt.Errorf("metrics %s{%s=%q}: bucket bounds out of order", name, label, key)
		}
	}
	return out, nil
}

// labelValue returns the value of label in a Prometheus label set such as
// `class="batch",le="0.5"`, or "" when it is missing. Values used here
// contain no escaped quotes.
func labelValue(labels, label string) string {
	for part := range strings.SplitSeq(labels, ",") {
		k, v, ok := strings.Cut(part, "=")
		if ok && k == label {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}
