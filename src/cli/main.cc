// mixattn: define, train, evaluate and serve MixAttention language models.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{
      "mixattn: define, train, evaluate and serve MixAttention language models.\n"
      "Layers mix full and sliding-window attention and may read an earlier layer's KV cache,\n"
      "so the KV cache shrinks by an order of magnitude at long context."};
  app.require_subcommand(0, 1);
  app.set_version_flag("--version", "mixattn 0.1.0");
  mixattn::cli::RegisterPlanCommand(app);
  mixattn::cli::RegisterInitCommand(app);
  mixattn::cli::RegisterGenerateCommand(app);
  mixattn::cli::RegisterBenchCommand(app);
  mixattn::cli::RegisterDataCommand(app);
  mixattn::cli::RegisterTrainCommand(app);
  mixattn::cli::RegisterEvalCommand(app);
  mixattn::cli::RegisterServeCommand(app);
  try {
    app.parse(argc, argv);
    if (app.get_subcommands().empty()) {
      std::fprintf(stderr, "%s\nerror: give a subcommand (see the list above)\n",
                   app.help().c_str());
      return 1;
    }
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const mixattn::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
