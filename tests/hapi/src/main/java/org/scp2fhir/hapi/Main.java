package org.scp2fhir.hapi;

import java.nio.file.Path;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;

/**
 * scp2fhir's test FHIR server. One process serves one role, on 127.0.0.1 and the given port
 * (0: a free one):
 *
 * <pre>
 *   java ... org.scp2fhir.hapi.Main server R4|R5 PORT      HAPI FHIR JPA at /fhir
 *   java ... org.scp2fhir.hapi.Main validator PROFILES PORT  the HL7 validator at /validate
 * </pre>
 *
 * Once it serves, it prints one line {@code LISTENING <port>} on stdout; logs go to stderr.
 * SIGTERM stops it, and so does the end of its stdin: the test harness holds it open, so a
 * killed test run leaves no server behind.
 */
public final class Main {
    private Main() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: Main server R4|R5 PORT | Main validator PROFILES_DIR PORT");
            System.exit(2);
        }
        Server jetty = new Server();
        ServerConnector connector = new ServerConnector(jetty);
        connector.setHost("127.0.0.1");
        connector.setPort(Integer.parseInt(args[2]));
        jetty.addConnector(connector);
        ServletContextHandler context = new ServletContextHandler();
        context.setContextPath("/");
        Runnable close;
        switch (args[0]) {
            case "server" -> {
                JpaServer server = new JpaServer(args[1]);
                server.mount(context);
                close = server::close;
            }
            case "validator" -> {
                ValidatorService validator = new ValidatorService(Path.of(args[1]));
                validator.mount(context);
                close = () -> {};
            }
            default -> throw new IllegalArgumentException("role server or validator, not " + args[0]);
        }
        jetty.setHandler(context);
        jetty.setStopAtShutdown(true);
        jetty.start();
        Runtime.getRuntime().addShutdownHook(new Thread(close));
        System.out.println("LISTENING " + connector.getLocalPort());
        System.out.flush();
        Thread lifeline = new Thread(() -> {
            try {
                while (System.in.read() != -1) {
                    // nothing is sent; only the end matters
                }
            } catch (java.io.IOException ignored) {
                // the same as the end
            }
            System.exit(0);
        }, "stdin-lifeline");
        lifeline.setDaemon(true);
        lifeline.start();
        jetty.join();
    }
}
