package proxy

import (
	"context"
	"strings"

	"github.com/llmproxy/llmproxy/internal/wire"
)

// PurgeModel purges the cached responses of model and logs the purge with
// reason at info level. cache.Purge empties L1 and L2 and publishes the
// purge, so that other instances that share the Redis empty their L1 too.
// PurgeModel does nothing when the cache is disabled. The app also calls
// it for the model changes that the health checker finds in model lists.
func (s *Server) PurgeModel(model, reason string) {
	if s.cache == nil || model == "" {
		return
	}
	model = wire.ModelKey(model)
	if err := s.cache.Purge(context.Background(), model); err != nil {
		// Purge empties this instance's L1 even then.
		s.log.Warn("cache purge of a changed model failed in Redis, so Redis and other instances may still serve its old responses; retry with POST /admin/cache/purge",
			"model", model, "reason", reason, "error", err)
		return
	}
	s.log.Info("cache purged", "model", model, "reason", reason)
}

// purgeChangedModel purges the cached responses of rs.changedModel when
// the model operation of rs succeeded on at least one node in results,
// because on that node the name then refers to another model, or to none.
func (s *Server) purgeChangedModel(rs *reqState, results []fanoutResult) {
	for _, r := range results {
		if r.errMsg == "" {
			s.PurgeModel(rs.changedModel, modelOpReason(rs))
			return
		}
	}
}

// modelOpReason returns the reason logged for the purge after the model
// operation of rs, such as "delete through the proxy".
func modelOpReason(rs *reqState) string {
	return strings.TrimPrefix(rs.route.name, "/api/") + " through the proxy"
}

// modelUnlisted reports whether the balancer has every node's model list
// and none of them lists model, so that a request for it gets the 404 of
// Ollama and not a response cached before the model was deleted.
func (s *Server) modelUnlisted(model string) bool {
	return model != "" && !s.bal.HasModel(model) && s.bal.ModelsKnown()
}
