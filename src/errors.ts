// Errors a user can act on. The top-level handler in cli.ts prints these without a
// stack trace and exits with `exitCode`; anything else is a bug and prints its stack.

export class UserError extends Error {
  constructor(message: string, readonly exitCode: number = 1) {
    super(message);
    this.name = "UserError";
  }
}

/** A bad config or bad usage: one `path: message` line per problem, exit 2. */
export class ConfigError extends UserError {
  constructor(readonly lines: string[], readonly file?: string) {
    super((file ? `invalid config ${file}:\n` : "invalid configuration:\n") + lines.map((l) => `  ${l}`).join("\n"), 2);
    this.name = "ConfigError";
  }
}

/** The run was interrupted (Ctrl-C): exit 130. */
export class Interrupted extends UserError {
  constructor(message = "interrupted") {
    super(message, 130);
    this.name = "Interrupted";
  }
}

/** Exit with this code, saying nothing more: a child process with this terminal's stdio said it. */
export class Exited extends UserError {
  constructor(exitCode: number) {
    super("", exitCode);
    this.name = "Exited";
  }
}
