package cache

import "strings"

// Result is the outcome of a lookup, for the X-LLMProxy-Cache response
// header.
type Result string

// Results of a lookup.
const (
	// ResultHitL1 is a response served from this instance's memory.
	ResultHitL1 Result = "hit-l1"
	// ResultHitL2 is a response served from Redis.
	ResultHitL2 Result = "hit-l2"
	// ResultMiss is a response that went upstream, or came from a
	// coalesced identical request that did.
	ResultMiss Result = "miss"
	// ResultPartial is an embedding response whose inputs were cached in
	// part, so the node computed only the others.
	ResultPartial Result = "partial"
	// ResultBypass is a request the cache did not look up: not cacheable,
	// or sent with Cache-Control: no-cache.
	ResultBypass Result = "bypass"
)

// ParseCacheControl returns whether a Cache-Control request header value
// contains the no-cache and no-store directives. Directive names are matched
// without case; other directives are ignored.
func ParseCacheControl(header string) (noCache, noStore bool) {
	for d := range strings.SplitSeq(header, ",") {
		name, _, _ := strings.Cut(d, "=")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "no-cache":
			noCache = true
		case "no-store":
			noStore = true
		}
	}
	return noCache, noStore
}
