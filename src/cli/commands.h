// Subcommands of the mixattn binary. Each Register* adds one subcommand (its flags, help and the
// callback that runs it) to the top-level app; main.cc only collects them.
#pragma once

namespace CLI {
class App;
}

namespace mixattn::cli {

void RegisterPlanCommand(CLI::App& app);
void RegisterInitCommand(CLI::App& app);
void RegisterGenerateCommand(CLI::App& app);
void RegisterBenchCommand(CLI::App& app);
void RegisterDataCommand(CLI::App& app);
void RegisterServeCommand(CLI::App& app);
void RegisterTrainCommand(CLI::App& app);
void RegisterEvalCommand(CLI::App& app);

}  // namespace mixattn::cli
